"""Embed and classify with an index's model, or with a named model where there is no index."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import StyleError
from clipsearch.index.imageindex import ImageIndex
from clipsearch.index.oneshot import classify, embed_query, index_exists
from clipsearch.index.query import Query
from clipsearch.models.loading import load_encoder


@pytest.fixture
def indexed(tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "idx"
    with ImageIndex.open_or_create(folder, tiny_model, device="cpu") as index:
        index.add([photo_dir])
    return folder


def test_index_exists_only_where_a_catalog_is(indexed, tmp_path):
    assert index_exists(indexed)
    assert not index_exists(tmp_path / "none")
    assert not index_exists(tmp_path)  # a folder, but no catalog in it
    assert not index_exists(None)


def test_embed_by_the_index_and_by_the_same_model_agree(indexed, tiny_model, photo_dir):
    image = photo_dir / "shapes" / "green_circle.png"
    query = Query.parse("a red circle", plus=[f"0.5:@{image}"], minus=["blue"])
    via_index = embed_query(query, index=indexed, device="cpu")
    via_model = embed_query(query, model=tiny_model, device="cpu")
    assert via_index.shape == (512,) and abs(np.linalg.norm(via_index) - 1) < 1e-5
    assert np.allclose(via_index, via_model, atol=1e-5)
    with ImageIndex.open(indexed, device="cpu") as index:
        assert np.allclose(index.query_vector(query), via_index, atol=1e-7)


def test_embed_without_an_index_matches_the_encoder(tiny_model, photo_dir, tmp_path):
    image = photo_dir / "more/nested" / "red_circle.png"
    encoder = load_encoder(tiny_model, device="cpu")
    got = embed_query(Query.image(str(image)), index=tmp_path / "none", model=tiny_model)
    assert np.allclose(got, encoder.encode_file(image), atol=1e-5)
    text = embed_query(Query.text("a dog"), model=tiny_model, device="cpu")
    assert np.abs(text - encoder.encode_texts(["a dog"])[0]).max() < 1e-4


def test_a_named_model_is_used_even_where_an_index_exists(indexed, tmp_path):
    from tests.helpers import save_tiny_model

    other = f"local-dir:{save_tiny_model(tmp_path / 'other', seed=9)}"
    query = Query.text("a red circle")
    assert not np.allclose(
        embed_query(query, index=indexed), embed_query(query, index=indexed, model=other)
    )


def test_classify_by_the_index_and_by_the_model_agree(indexed, tiny_model, photo_dir):
    image = photo_dir / "shapes" / "green_circle.png"
    by_index = classify(image, "circle, square,triangle", index=indexed, device="cpu")
    by_model = classify(image, ["circle", "square", "triangle"], model=tiny_model, device="cpu")
    assert [p.label for p in by_index] == [p.label for p in by_model]
    assert np.allclose([p.probability for p in by_index], [p.probability for p in by_model])
    assert abs(sum(p.probability for p in by_index) - 1) < 1e-5
    probs = [p.probability for p in by_index]
    assert probs == sorted(probs, reverse=True)


def test_classify_checks_the_labels_before_loading_a_model(photo_dir, tmp_path):
    image = photo_dir / "shapes" / "green_circle.png"
    with pytest.raises(StyleError):  # not ModelLoadError: the model is never loaded
        classify(image, "cat", model="no-such-model", pretrained="x")
