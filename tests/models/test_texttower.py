"""Text queries without torch: the NumPy tokenizer and text tower give open_clip's tokens and
vectors, `clipsearch search "text"` never imports torch once the model is recorded, and every
model or change the NumPy path cannot follow goes back to torch.

Timings live in benchmarks/bench_search.py, never here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch import ImageIndex, IndexMismatchError, ModelLoadError
from clipsearch.cli.main import main
from clipsearch.models.identity import DEMO_DIR, ModelSpec, checkpoint_in_folder, file_sha256
from clipsearch.models.loading import load_encoder, load_text_encoder
from clipsearch.models.npmath import gelu, quick_gelu
from clipsearch.models.texttower import (
    NumpyTextEncoder,
    TextTowerConfig,
    cache_root,
    cached_text_encoder,
    describe,
)
from clipsearch.models.tokenizer import ClipTokenizer, clean, plain_ascii
from tests.helpers import PREPROCESS_CFG, TINY_CFG, put_in_hf_cache, save_tiny_model

TOLERANCE = 1e-4  # max abs difference of unit vectors, NumPy fp32 vs open_clip fp32

TEXTS = [
    "a red circle",
    "A Photo of a DOG on the beach!!",
    "",
    "   ",
    "!",
    "it's a dog's life, isn't it? we'll see; they'd've",
    "12345 3.14 1,000,000",
    "café naïve résumé Ünïcödé",
    "東京タワーの夜景",
    "Привет мир",
    "مرحبا بالعالم",
    "emoji 😀🐶🏖️ 👩‍👩‍👧 flags 🇫🇷",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &amp;amp;lt; &nbsp;",
    "<start_of_text> and <END_OF_TEXT> typed by hand",
    "cafÃ© mojibake â€™ and ligatures ﬁ ﬂ and ＦＵＬＬＷＩＤＴＨ",
    "tabs\tand\nnew\r\nlines \x1b[31mred\x1b[0m \x00 control",
    "a photo of " + "very " * 100 + "long text",
    " ".join(f"w{i}" for i in range(200)),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 300,
    "a-b_c/d\\e|f~g`h^i*j+k=l@m#n$o%p",
]


@pytest.fixture(scope="module")
def reference_tokenizer():
    return open_clip.get_tokenizer("ViT-B-16")


def open_clip_vectors(model_name: str, texts: list[str]) -> np.ndarray:
    """What open_clip itself gives: its model and tokenizer, fp32, normalized."""
    model, _, _ = open_clip.create_model_and_transforms(model_name)
    model.eval()
    tokens = open_clip.get_tokenizer(model_name)(texts)
    with torch.inference_mode():
        return model.encode_text(tokens, normalize=True).numpy()


# --- the tokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("context_length", [77, 32, 5])
def test_tokens_equal_open_clips_on_hard_cases(reference_tokenizer, context_length):
    ours = ClipTokenizer(context_length)(TEXTS)
    theirs = reference_tokenizer(TEXTS, context_length=context_length).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(TEXTS), context_length)
    np.testing.assert_array_equal(ours, theirs)


def test_merge_list_is_read_whole_from_open_clips_file():
    import gzip

    from clipsearch.models.tokenizer import N_MERGES, read_merges, vocab_path

    lines = gzip.decompress(vocab_path().read_bytes()).decode("utf-8").split("\n")
    assert read_merges(vocab_path()) == lines[1 : N_MERGES + 1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60),
            st.text(alphabet="ab &;#x0123456789lgtamp'sSLT<>_", max_size=40),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_tokens_equal_open_clips_on_any_text(reference_tokenizer, texts):
    ours = ClipTokenizer()(texts)
    np.testing.assert_array_equal(ours, reference_tokenizer(texts).numpy())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80))
def test_ftfy_leaves_printable_ascii_without_ampersands_alone(text):
    """Why clean() may skip importing ftfy for such text."""
    import ftfy

    if plain_ascii(text):
        assert ftfy.fix_text(text) == text
        assert clean(text) == " ".join(text.split()).lower()


# --- the text tower ------------------------------------------------------------------------


def test_gelu_is_exact_and_quick_gelu_is_open_clips():
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-8, -1e-8, 40.0, -40.0]])
    x32 = x.astype(np.float32)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x32.astype(float)])
    assert np.abs(gelu(x32) - exact).max() < 2e-6
    torch_gelu = torch.nn.functional.gelu(torch.from_numpy(x32)).numpy()
    assert np.abs(gelu(x32) - torch_gelu).max() < 2e-6
    quick = open_clip.transformer.QuickGELU()(torch.from_numpy(x32)).numpy()
    assert np.abs(quick_gelu(x32) - quick).max() < 2e-6
    assert np.isfinite(gelu(x32)).all() and np.isfinite(quick_gelu(x32)).all()


def _save(folder, cfg, seed=0, fmt="safetensors"):
    """A local-dir: model of any config, with seeded random weights."""
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{_config_dir(folder, cfg)}", load_weights=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


def _config_dir(folder, cfg):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": cfg, "preprocess_cfg": PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("which", ["tiny", "quick", "demo"])
def test_numpy_vectors_equal_open_clips(which, tiny_model_dir, quick_model_dir):
    folder = {"tiny": tiny_model_dir, "quick": quick_model_dir, "demo": DEMO_DIR}[which]
    name = "demo" if which == "demo" else f"local-dir:{folder}"
    spec = ModelSpec.from_user(name, None)
    assert cached_text_encoder(spec) is None  # nothing recorded yet
    load_encoder(name, device="cpu", precision="auto")  # the torch load records it
    fast = cached_text_encoder(spec)
    assert isinstance(fast, NumpyTextEncoder)
    assert fast.tower.config.quick_gelu == (which == "quick")
    got = fast.encode_texts(TEXTS)
    want = open_clip_vectors(f"local-dir:{folder}", TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # One at a time (one BLAS thread) and many at once agree.
    one = np.stack([fast.encode_texts([t])[0] for t in TEXTS[:4]])
    assert np.abs(one - got[:4]).max() < 1e-5


def test_describe_reads_the_tower_shape_from_the_model(quick_model_dir):
    """describe's checks (model, tokenizer, blocks, LayerNorms, projection) together give the
    shape of a standard tower, and None once one part is not standard."""
    name = f"local-dir:{quick_model_dir}"
    model = open_clip.create_model(name)
    tokenizer = open_clip.get_tokenizer(name)
    config = describe(model, tokenizer)
    assert config == TextTowerConfig(
        context_length=16,
        vocab_size=49408,
        width=64,
        heads=2,
        layers=2,
        mlp_width=256,
        quick_gelu=True,
        ln_eps=1e-5,
        pool="argmax",
        eos_id=model.text_eos_id,
        projection="matrix",
        projection_bias=False,
    )
    model.transformer.resblocks[1].mlp.gelu = torch.nn.GELU(approximate="tanh")
    assert describe(model, tokenizer) is None
    model.transformer.resblocks[1].mlp.gelu = torch.nn.GELU()  # exact, unlike block 0
    assert describe(model, tokenizer) is None  # one activation for all blocks


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def invoke(*args, index_dir=tmp_path / "idx"):
        return runner.invoke(main, ["--index", str(index_dir), *map(str, args)])

    return invoke


def _hits(result) -> list[tuple[str, float]]:
    assert result.exit_code == 0, result.output
    return [(h["path"], h["score"]) for h in json.loads(result.output)]


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_cli_search_gives_the_torch_paths_results(
    cli, tiny_model, photo_dir, model, tmp_path, monkeypatch
):
    name = tiny_model if model == "tiny" else "demo"
    assert cli("index", photo_dir, "--model", name, "--device", "cpu").exit_code == 0
    queries = ["a red circle", "a blue square", "a green triangle on white"]
    fast = [_hits(cli("search", q, "-k", "12", "--json")) for q in queries]
    with ImageIndex.open(tmp_path / "idx") as index:
        assert isinstance(index.text_encoder, NumpyTextEncoder)
    # The same searches through torch in fp32: an empty cache has no record to use.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with ImageIndex.open(tmp_path / "idx", precision="fp32") as index:
        slow = [[(h.path, h.score) for h in index.search(q, k=12)] for q in queries]
        assert not isinstance(index.text_encoder, NumpyTextEncoder)
    for f, s in zip(fast, slow, strict=True):
        assert [p for p, _ in f] == [p for p, _ in s]
        assert max(abs(a - b) for (_, a), (_, b) in zip(f, s, strict=True)) < 1e-5


@pytest.mark.slow
def test_cli_text_search_does_not_import_torch(cli, tiny_model, photo_dir, tmp_path):
    assert cli("index", photo_dir, "--model", tiny_model, "--device", "cpu").exit_code == 0
    script = textwrap.dedent(
        """
        import json, sys
        from clipsearch.cli.main import main
        try:
            main(sys.argv[1:])
        except SystemExit as e:
            code = e.code
        heavy = ["torch", "open_clip", "torchvision", "sqlalchemy", "onnxruntime", "onnx"]
        print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
        """
    )

    def run(*args):
        argv = [sys.executable, "-c", script, "--index", str(tmp_path / "idx"), *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    report, out = run("search", "a red circle", "-k", "3")
    assert report == {"code": 0, "loaded": []}, out  # the catalog reads without SQLAlchemy
    assert len(out.strip().splitlines()) == 4  # three hits, then the report
    report, _ = run("search", "a red circle", "--plus", "2:a square", "--minus", "blue")
    assert report["loaded"] == []
    report, _ = run("--help")
    assert report == {"code": 0, "loaded": []}
    # An image that is not indexed needs the image tower: NumPy's, still without torch.
    outside = tmp_path / "outside.png"
    (photo_dir / "shapes" / "green_circle.png").rename(outside)
    report, _ = run("search", "a red circle", "--plus", f"@{outside}")
    assert report == {"code": 0, "loaded": []}
    report, out = run("similar", outside, "-k", "2")
    assert report == {"code": 0, "loaded": []} and len(out.strip().splitlines()) == 3


def test_embed_uses_the_numpy_path_with_or_without_an_index(cli, tiny_model, photo_dir):
    assert cli("index", photo_dir, "--model", tiny_model, "--device", "cpu").exit_code == 0
    via_index = json.loads(cli("embed", "--text", "a red circle", "--json").output)
    fast = load_text_encoder(tiny_model, device="cpu", precision="auto")
    assert isinstance(fast, NumpyTextEncoder)
    assert np.allclose(fast.encode_texts(["a red circle"])[0], via_index, atol=1e-7)
    full = load_encoder(tiny_model, device="cpu", precision="fp32")
    assert np.abs(full.encode_texts(["a red circle"])[0] - via_index).max() < TOLERANCE
    # An explicit bf16, fp16 or GPU is the torch path's to honour (or, here, refuse).
    bf16 = load_text_encoder(tiny_model, device="cpu", precision="bf16")
    assert not isinstance(bf16, NumpyTextEncoder) and bf16.precision == "bf16"
    with pytest.raises(ModelLoadError, match="fp16"):
        load_text_encoder(tiny_model, device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="cuda"):
            load_text_encoder(tiny_model, device="cuda")


# --- what the NumPy path cannot follow goes back to torch --------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"text_cfg": {"ls_init_value": 0.1}},  # layer scale
        {"custom_text": True},  # another model class
        {"text_cfg": {"no_causal_mask": True}},  # attends both ways
        {"text_cfg": {"pool_type": "last"}},
        {"text_cfg": {"tokenizer_kwargs": {"clean": "whitespace"}}},  # keeps upper case
    ],
    ids=["layer-scale", "custom-text", "no-causal-mask", "pool-last", "tokenizer-clean"],
)
def test_a_model_the_numpy_path_cannot_run_uses_torch(change, tmp_path, photo_dir):
    cfg = json.loads(json.dumps(TINY_CFG))
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    name = f"local-dir:{_save(tmp_path / 'model', cfg, seed=5)}"
    with ImageIndex.create(tmp_path / "idx", model=name, device="cpu") as index:
        index.add([photo_dir])
    assert not list(cache_root().glob("*.json"))  # nothing recorded
    with ImageIndex.open(tmp_path / "idx", device="cpu", precision="fp32") as index:
        hits = index.search("A Red Circle", k=3)
        assert len(hits) == 3 and not isinstance(index.text_encoder, NumpyTextEncoder)
        want = open_clip_vectors(name, ["A Red Circle"])[0]
        assert np.abs(index.embed_text("A Red Circle") - want).max() < 1e-5


def test_random_weights_are_never_recorded(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "clipsearch-fastpath-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / "clipsearch-fastpath-test.json")
    load_encoder("clipsearch-fastpath-test", "random", device="cpu")
    assert not cache_root().exists() or not list(cache_root().iterdir())
    spec = ModelSpec.from_user("clipsearch-fastpath-test", "random")
    assert cached_text_encoder(spec) is None
    assert not isinstance(load_text_encoder("clipsearch-fastpath-test", "random"), NumpyTextEncoder)


def test_a_bin_checkpoint_is_copied_once_and_reused(tmp_path):
    folder = _save(tmp_path / "binmodel", json.loads(json.dumps(TINY_CFG)), seed=6, fmt="bin")
    name = f"local-dir:{folder}"
    assert checkpoint_in_folder(folder).endswith(".bin")
    load_encoder(name, device="cpu")
    records = list(cache_root().glob("*.json"))
    copies = list(cache_root().glob("*.safetensors"))
    assert len(records) == 1 and len(copies) == 1
    record = json.loads(records[0].read_text())
    assert record["weights"] == str(copies[0]) and record["source"].endswith(".bin")
    stamp = (records[0].stat().st_mtime_ns, copies[0].stat().st_mtime_ns)
    load_encoder(name, device="cpu", towers="text")  # a second load finds it valid
    assert (records[0].stat().st_mtime_ns, copies[0].stat().st_mtime_ns) == stamp
    fast = cached_text_encoder(ModelSpec.from_user(name, None))
    want = open_clip_vectors(name, TEXTS)
    assert np.abs(fast.encode_texts(TEXTS) - want).max() < TOLERANCE


def test_a_safetensors_checkpoint_is_read_in_place(tiny_model, tiny_model_dir):
    load_encoder(tiny_model, device="cpu")
    (record,) = [json.loads(p.read_text()) for p in cache_root().glob("*.json")]
    assert record["weights"] == str(tiny_model_dir / "open_clip_model.safetensors")
    assert not list(cache_root().glob("*.safetensors"))


def test_changed_weights_are_noticed(tmp_path, photo_dir):
    folder = save_tiny_model(tmp_path / "model", seed=7)
    name = f"local-dir:{folder}"
    with ImageIndex.create(tmp_path / "idx", model=name, device="cpu") as index:
        index.add([photo_dir])
        identity = index.identity
    spec = ModelSpec.from_user(name, None)
    assert cached_text_encoder(spec, identity) is not None
    save_tiny_model(folder, seed=8)  # other weights under the same name
    assert cached_text_encoder(spec, identity) is None
    with (
        ImageIndex.open(tmp_path / "idx", device="cpu") as index,
        pytest.raises(IndexMismatchError, match="changed since"),
    ):
        index.search("a red circle")


def test_a_tag_in_the_hub_cache_is_read_in_place_until_the_cache_moves_on(tmp_path):
    folder = tmp_path / "builtin"
    weights = save_tiny_model(folder / "weights", seed=9) / "open_clip_model.safetensors"
    (folder / "clipsearch-fastpath-tag.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / "clipsearch-fastpath-tag.json")
    cfg = open_clip.pretrained._pcfg(hf_hub="clipsearch-test/tagged/", quick_gelu=True)
    open_clip.pretrained._PRETRAINED["clipsearch-fastpath-tag"] = {"tag": cfg}
    try:
        snap = put_in_hf_cache(
            os.environ["HF_HUB_CACHE"],
            "clipsearch-test/tagged",
            {"open_clip_model.safetensors": weights},
        )
        full = load_encoder("clipsearch-fastpath-tag", "tag", device="cpu", precision="fp32")
        spec = ModelSpec.from_user("clipsearch-fastpath-tag", "tag")
        fast = cached_text_encoder(spec, full.identity)
        assert fast is not None and fast.tower.config.quick_gelu  # the tag's QuickGELU
        (record,) = [json.loads(p.read_text()) for p in cache_root().glob("*.json")]
        assert record["weights"] == str(snap / "open_clip_model.safetensors")
        assert np.abs(fast.encode_texts(TEXTS) - full.encode_texts(TEXTS)).max() < TOLERANCE
        refs = snap.parent.parent / "refs" / "main"
        refs.write_text("f" * 40)  # the cache now resolves the tag to another snapshot
        assert cached_text_encoder(spec, full.identity) is None
    finally:
        del open_clip.pretrained._PRETRAINED["clipsearch-fastpath-tag"]


def test_a_damaged_record_or_copy_goes_back_to_torch(tmp_path):
    folder = _save(tmp_path / "binmodel", json.loads(json.dumps(TINY_CFG)), seed=10, fmt="bin")
    name = f"local-dir:{folder}"
    load_encoder(name, device="cpu")
    spec = ModelSpec.from_user(name, None)
    (copy,) = cache_root().glob("*.safetensors")
    copy.write_bytes(copy.read_bytes()[:1000])  # truncated
    assert cached_text_encoder(spec) is None
    load_encoder(name, device="cpu")  # the torch path writes it again
    assert cached_text_encoder(spec) is not None
    (record,) = cache_root().glob("*.json")
    record.write_text("{not json")
    assert cached_text_encoder(spec) is None


# --- helpers that must not import torch ----------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [
        ["b.safetensors", "a.safetensors", "z.bin"],
        ["model.pth", "pytorch_model.bin", "x.safetensors"],
        ["open_clip_pytorch_model.bin", "open_clip_model.safetensors", "a.safetensors"],
        ["z.pth", "b.bin"],
        ["model.safetensors", "open_clip_pytorch_model.pth"],
        ["notes.txt"],
    ],
)
def test_checkpoint_choice_is_open_clips(tmp_path, files):
    from open_clip.factory import _find_checkpoint_in_dir

    for f in files:
        (tmp_path / f).write_bytes(b"x")
    assert checkpoint_in_folder(tmp_path) == _find_checkpoint_in_dir(tmp_path)


def test_file_checksums_are_remembered_until_the_file_changes(tmp_path):
    import hashlib

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(list((cache_root().parent / "sha256").glob("*.json"))) == 1
    assert file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()  # remembered
    path.write_bytes(b"b" * 1000)  # same size, new content
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_text_vectors_do_not_depend_on_what_else_the_process_loaded(
    tmp_path, tiny_model, photo_dir
):
    with ImageIndex.create(tmp_path / "idx", model=tiny_model, device="cpu") as index:
        index.add([photo_dir])  # the full model is loaded (and recorded the text tower)
        before = index.embed_text("a red circle")
        assert isinstance(index.text_encoder, NumpyTextEncoder)
    with ImageIndex.open(tmp_path / "idx", device="cpu") as index:
        assert np.array_equal(index.embed_text("a red circle"), before)  # a first query: NumPy
        text_encoder = index.text_encoder
        index.similar(photo_dir / "shapes" / "green_circle.png")
        _ = index.encoder  # an image query loads torch: text queries stay as they were
        assert index.text_encoder is text_encoder
        # (later queries run in ONNX Runtime, whose sums round a little differently)
        assert np.abs(index.embed_text("a red circle") - before).max() < 1e-6
