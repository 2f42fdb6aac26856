"""Search in Korean, English and Russian with a model whose text tower comes from Hugging Face
transformers (the tiny random XLM-R model of tests/helpers.py), from the CLI and the Python
API, offline. Random weights make any semantic ranking meaningless, so the tests check what
is true of any model: the ranking is the exact cosine ranking of the stored image vectors
against open_clip's own text vector of the query."""

from __future__ import annotations

import json
import os

import numpy as np
import open_clip
import pytest
import torch

from clipsearch import ImageIndex
from clipsearch.errors import IndexMismatchError, QueryError
from clipsearch.models.identity import DEMO_DIR
from tests.helpers import draw_image, save_tiny_model

QUERIES = {"ko": "빨간 원 그림", "en": "a red circle drawing", "ru": "красный круг рисунок"}


@pytest.fixture(scope="module")
def reference(tiny_hf_model_dir):
    """open_clip's own text encoder for the tiny HF model (built from inside its folder, where
    its relative hf_model_name resolves the way open_clip resolves it)."""
    cwd = os.getcwd()
    os.chdir(tiny_hf_model_dir)
    try:
        model = open_clip.create_model(f"local-dir:{tiny_hf_model_dir}").eval()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_hf_model_dir}")
    finally:
        os.chdir(cwd)

    def encode(texts):
        with torch.no_grad():
            return model.encode_text(tokenizer(texts), normalize=True).numpy()

    return encode


@pytest.fixture
def hf_indexed(run, tiny_hf_model, photo_dir, tmp_path):
    result = run("index", photo_dir, "--model", tiny_hf_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return tmp_path / "idx"


def brute_force(index_dir, query_vector):
    """Every stored image by cosine similarity to the query vector, best first."""
    with ImageIndex.open(index_dir) as index:
        ids, vectors = (np.concatenate(a) for a in zip(*index.catalog.iter_vectors(), strict=True))
        paths = {i: img.path for i, img in index.catalog.images(ids.tolist()).items()}
    scores = vectors @ query_vector
    order = np.argsort(-scores, kind="stable")
    return [(paths[int(ids[j])], float(scores[j])) for j in order]


def assert_same_ranking(hits, expected):
    assert [h["path"] for h in hits] == [p for p, _ in expected[: len(hits)]]
    assert np.allclose([h["score"] for h in hits], [s for _, s in expected[: len(hits)]], atol=1e-5)
    assert all(np.isfinite(h["score"]) for h in hits)


@pytest.mark.parametrize("language", list(QUERIES))
def test_cli_search_in_each_script_is_the_exact_cosine_ranking(
    run, hf_indexed, reference, language
):
    text = QUERIES[language]
    result = run("search", text, "-k", "12", "--json")  # indexing recorded the NumPy tower
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 12
    assert_same_ranking(hits, brute_force(hf_indexed, reference([text])[0]))


def test_python_api_search_and_embed_in_three_scripts(hf_indexed, reference):
    with ImageIndex.open(hf_indexed, device="cpu") as index:
        vectors = np.stack([index.embed_text(t) for t in QUERIES.values()])
        assert np.abs(vectors - reference(list(QUERIES.values()))).max() < 1e-5
        for text, vector in zip(QUERIES.values(), vectors, strict=True):
            hits = [h.to_dict() for h in index.search(text, k=5)]
            assert_same_ranking(hits, brute_force(hf_indexed, vector))
    # three scripts, three different vectors
    assert min(np.linalg.norm(vectors[i] - vectors[j]) for i in range(3) for j in range(i)) > 1e-3


@pytest.mark.parametrize(
    "text",
    [
        "빨간 원",
        "красный круг",
        "빨간 원 red circle красный круг",  # mixed scripts in one query
        " ".join(["고양이 바다 кошка море cat sea"] * 30),  # far past the context: truncated
    ],
)
def test_cli_embed_matches_open_clip(run, tiny_hf_model, reference, text):
    # fp32: with nothing recorded yet, `auto` runs the torch tower in bf16 where the CPU has it
    args = ["--text", text, "--model", tiny_hf_model, "--json", "--precision", "fp32"]
    result = run("embed", *args)
    assert result.exit_code == 0, result.output
    ours = np.array(json.loads(result.output), dtype=np.float32)
    assert ours.shape == (512,) and np.isfinite(ours).all()
    assert np.abs(ours - reference([text])[0]).max() < 1e-5


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_and_blank_queries_are_refused_as_for_clip(hf_indexed, tiny_model, text, run):
    """The same QueryError line as for the CLIP-BPE models: the query is refused before any
    model sees it."""
    result = run("search", text)
    assert result.exit_code == 1 and result.output.startswith("clipsearch: error: ")
    assert "empty" in result.output and len(result.output.strip().splitlines()) == 1
    with ImageIndex.open(hf_indexed) as index, pytest.raises(QueryError, match="empty"):
        index.search(text)
    embedded = run("embed", "--text", text, "--model", tiny_model)
    assert embedded.exit_code == result.exit_code and "empty" in embedded.output


def test_an_overlong_query_is_refused_as_for_clip(hf_indexed, run):
    """Past the context a query is truncated (above); past the length limit of every query,
    refused with the same line as for the CLIP-BPE models."""
    result = run("search", "고양이 " * 400)
    assert result.exit_code == 1 and "the limit is" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_korean_zero_shot_labels_on_the_hf_model(run, hf_indexed, tiny_hf_model, tmp_path):
    labels = ["사진", "그림", "풍경"]
    result = run("style", "apply", "--labels", ",".join(labels), "--json")
    assert result.exit_code == 0, result.output
    with ImageIndex.open(hf_indexed) as index:
        stats = index.styles.stats()
        assert set(stats.labels) == set(labels)
        counts = dict(stats.counts)
        assert sum(counts.values()) == 12 and set(counts) <= set(labels)
    image = draw_image(tmp_path / "q.png", "blue", "square")
    out = run("classify", image, "--labels", ",".join(labels), "--model", tiny_hf_model, "--json")
    assert out.exit_code == 0, out.output
    predictions = json.loads(out.output)
    assert sorted(p["label"] for p in predictions) == sorted(labels)
    assert abs(sum(p["probability"] for p in predictions) - 1) < 1e-5


def test_korean_labels_on_the_demo_model(run, tmp_path):
    assert (DEMO_DIR / "open_clip_config.json").is_file()
    image = draw_image(tmp_path / "q.png", "red", "circle")
    result = run("classify", image, "--labels", "고양이,강아지,자동차", "--model", "demo", "--json")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)
    assert predictions[0]["label"] in {"고양이", "강아지", "자동차"} and len(predictions) == 3


def test_an_index_refuses_another_model(run, hf_indexed, tiny_model, tiny_hf_model_dir, tmp_path):
    photos = tmp_path / "more"
    draw_image(photos / "x.png", "green")
    for other in (tiny_model, f"local-dir:{save_tiny_model(tmp_path / 'clip', seed=5)}"):
        result = run("index", photos, "--model", other)
        assert result.exit_code == 1 and "vectors of different models" in result.output
    with pytest.raises(IndexMismatchError):
        ImageIndex.open_or_create(hf_indexed, tiny_model)
    with ImageIndex.open_or_create(hf_indexed, f"local-dir:{tiny_hf_model_dir}") as index:
        assert index.count == 12  # its own model is accepted


def test_real_multilingual_tags_not_cached_are_one_line(run):
    """xlm-roberta-base-ViT-B-32 and nllb-clip-base with an empty cache, offline: the same one
    line and exit code as any other model's load error, before anything is downloaded."""
    tags = (("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"), ("nllb-clip-base", "v1"))
    for model, tag in tags:
        result = run("embed", "--text", "고양이", "--model", model, "--pretrained", tag)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"clipsearch: error: model {model} ({tag}): ")
        assert "not in the local cache" in result.output and "HF_HUB_OFFLINE" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_info_shows_the_text_checksum(run, hf_indexed, tiny_hf_model):
    from clipsearch.models.identity import ModelSpec, spec_key

    data = json.loads(run("info", "--json").output)
    assert data["text_sha256"] and spec_key(ModelSpec(tiny_hf_model, None)).endswith(
        f"|text:{data['text_sha256']}"
    )
