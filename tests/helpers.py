"""Helpers the tests share: a tiny real open_clip model, generated images, crash injection."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, ImageDraw

TINY_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 1,
    },
}


def vision_cfg(quick_gelu: bool = False, **vision) -> dict:
    """TINY_CFG with its image tower changed (``vision_cfg`` keys of open_clip)."""
    import copy

    cfg = copy.deepcopy(TINY_CFG)
    cfg["vision_cfg"].update(vision)
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def random_clip(cfg: dict, seed: int = 0):  # noqa: ANN201 - an open_clip.CLIP
    """An open_clip ``CLIP`` of a config in eval mode, every image tower weight perturbed
    (LayerNorms start as ones and zeros: make every weight count)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


# The image towers models/imagetower.py covers, as vision_cfg keyword arguments.
VISION_VARIANTS = {
    "class-token": {},
    "quick-gelu": {"quick_gelu": True},
    "avg-pool": {"pool_type": "avg"},
    "avg-pool-ln-after": {"pool_type": "avg", "final_ln_after_pool": True},
    "no-ln-pre": {"no_ln_pre": True},
    "sincos-pos": {"pos_embed_type": "sin_cos_2d"},
    "two-layers-64px": {"layers": 2, "image_size": 64, "patch_size": 8},
}


PREPROCESS_CFG = {
    "size": 32,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def save_tiny_model(
    folder: Path, seed: int = 0, cfg: dict | None = None, preprocess: dict | None = None
) -> Path:
    """Create a tiny open_clip CLIP with seeded random weights as a local-dir: folder (the
    config ``cfg``, TINY_CFG by default)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = cfg or TINY_CFG
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess or PREPROCESS_CFG})
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}


def draw_image(
    path: Path,
    color: str = "red",
    shape: str = "circle",
    size: int = 64,
    background=(255, 255, 255),
    fmt: str | None = None,
) -> Path:
    img = shape_image(color, shape, size, background)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Lay files out the way huggingface_hub caches a downloaded repo snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = Path(cache) / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        (snap / name).write_bytes(Path(src).read_bytes())
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


# The transpose that, applied to an upright picture, stores it so that EXIF orientation N
# brings it back upright.
_EXIF_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_for_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera would store for ``upright`` under EXIF orientation 1-8."""
    inverse = _EXIF_INVERSE.get(orientation)
    return upright if inverse is None else upright.transpose(inverse)


class WriteCrash(BaseException):
    """Stands for the process dying in the middle of a write (not an Exception, so nothing
    on the way catches it)."""


def crashing_writer(real: Callable[[Path, bytes], None], allowed_writes: int):
    """A stand-in for ``clipsearch.store.vectors._atomic_write`` that lets ``allowed_writes`` writes
    through, then leaves half of the next one in a temp file and raises :class:`WriteCrash`."""
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        if calls["n"] == allowed_writes:
            path.with_name(path.name + ".123.tmp").write_bytes(data[: len(data) // 2])
            raise WriteCrash
        calls["n"] += 1
        real(path, data)

    return write


# --- a tiny multilingual model: an XLM-R text tower from Hugging Face transformers -----------

TINY_HF_TEXT_CFG = {
    "hf_model_name": ".",  # the tower's config.json is in the model folder itself
    "hf_tokenizer_name": ".",
    "hf_proj_type": "linear",
    "hf_pooler_type": "mean_pooler",
    "context_length": 32,
}

# Words the tokenizer is trained on, in three scripts; the corpus is random sentences of them.
CORPUS_WORDS = {
    "ko": "고양이 강아지 사진 바다 산 하늘 꽃 자동차 도시 밤 낮 빨간 파란 초록 노란 원 사각형 "
    "삼각형 그림 풍경 사람 아이 집 나무 물 해변 일몰 눈 비 숲",
    "en": "cat dog photo sea mountain sky flower car city night day red blue green yellow circle "
    "square triangle drawing landscape person child house tree water beach sunset snow rain forest",
    "ru": "кошка собака фото море гора небо цветок машина город ночь день красный синий зелёный "
    "жёлтый круг квадрат треугольник рисунок пейзаж человек ребёнок дом дерево вода пляж закат "
    "снег дождь лес",
}
# XLM-R's special tokens, in its order: <s>=0, <pad>=1, </s>=2, <unk>=3 (open_clip's HF tower
# masks the pad id from its config; the mean pooler averages every other position).
HF_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def multilingual_corpus(lines_per_language: int = 200, seed: int = 0) -> list[str]:
    """Random sentences of :data:`CORPUS_WORDS`, in Korean, English and Russian."""
    import random

    rng = random.Random(seed)
    lines = []
    for words in CORPUS_WORDS.values():
        vocab = words.split()
        for _ in range(lines_per_language):
            lines.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 10))))
    return lines


def save_hf_tokenizer(folder: Path, lines: list[str], vocab_size: int = 2000) -> Path:
    """Train a SentencePiece-style unigram tokenizer (XLM-R's kind) on ``lines`` and save it
    in ``folder`` as a fast tokenizer that ``AutoTokenizer.from_pretrained`` loads offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(HF_SPECIAL_TOKENS), unk_token="<unk>"
    )
    tok.train_from_iterator(lines, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    s, pad, e, unk, mask = HF_SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=s,
        cls_token=s,
        eos_token=e,
        sep_token=e,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
    )
    fast.save_pretrained(str(folder))
    return folder


def save_tiny_hf_model(
    folder: Path,
    seed: int = 0,
    *,
    lines: list[str] | None = None,
    text_cfg: dict | None = None,
    tower_dir: str = ".",
) -> Path:
    """A tiny open_clip ``CustomTextCLIP`` with an XLM-R text tower (2 layers, width 64) and a
    tokenizer trained on :func:`multilingual_corpus`, seeded random weights, as a local-dir:
    folder: open_clip_config.json, open_clip_model.safetensors, the tokenizer's files, and the
    tower's config.json in ``tower_dir`` (relative to the folder)."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer(folder, lines if lines is not None else multilingual_corpus(seed=seed))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = {**TINY_HF_TEXT_CFG, "hf_model_name": tower_dir, **(text_cfg or {})}
    XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        # RoBERTa numbers positions from pad_token_id + 1: room for the context and that offset
        max_position_embeddings=text["context_length"] + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).save_pretrained(str(folder / tower_dir))
    model_cfg = {"embed_dim": 512, "vision_cfg": TINY_CFG["vision_cfg"], "text_cfg": text}
    build_cfg = {**text, "hf_model_name": str(folder / tower_dir), "hf_model_pretrained": False}
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": build_cfg})
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS_CFG}, ensure_ascii=False)
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def draw_near_duplicates(root: Path, start: float = 1_700_000_000.0) -> dict[str, Path]:
    """Near-duplicates of one picture and unrelated pictures, with set modification times.

    ``base`` (128 px) and its JPEG re-encode ``jpeg`` (128 px, newer), its byte-identical
    ``copy`` (newest), a 116 px crop ``crop`` and a 64 px resize ``small`` (the oldest file,
    but the smallest); ``blue`` and its byte-identical ``blue_copy``; three unrelated shapes.
    """
    import shutil

    base = draw_image(root / "a" / "base.png", "red", "circle", size=128)
    picture = Image.open(base)
    files = {"base": base, "jpeg": root / "b" / "reencoded.jpg", "copy": root / "c" / "copy.png"}
    files["jpeg"].parent.mkdir(parents=True, exist_ok=True)
    picture.save(files["jpeg"], quality=80)
    files["copy"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base, files["copy"])
    files["crop"] = root / "b" / "crop.png"
    picture.crop((6, 6, 122, 122)).save(files["crop"])
    files["small"] = root / "a" / "small.png"
    picture.resize((64, 64)).save(files["small"])
    files["blue"] = draw_image(root / "other" / "blue_square.png", "blue", "square", size=96)
    files["blue_copy"] = root / "c" / "blue_square copy.png"
    shutil.copyfile(files["blue"], files["blue_copy"])
    for color, shape in [("green", "triangle"), ("yellow", "circle"), ("purple", "triangle")]:
        files[color] = draw_image(root / "other" / f"{color}_{shape}.png", color, shape, size=96)
    ages = {"small": -100, "base": 0, "jpeg": 10, "copy": 20, "crop": 30, "blue": 0}
    ages["blue_copy"] = 5
    for name, path in files.items():
        t = start + ages.get(name, 50)
        os.utime(path, (t, t))
    return files


def save_photo(
    path: Path,
    color: str = "red",
    shape: str = "circle",
    *,
    taken: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: tuple | None = None,
    mtime: float | None = None,
) -> Path:
    """A generated JPEG with the EXIF a camera writes: DateTimeOriginal (``YYYY:MM:DD
    HH:MM:SS``, written as given, so a broken one too) and its OffsetTimeOriginal, Make and
    Model, and a GPS IFD from ``gps`` = (lat, lon) in signed degrees or the raw tags
    {tag: value}. ``mtime`` sets the file's modification time."""
    from PIL.TiffImagePlugin import IFDRational

    draw_image(path, color, shape, fmt="JPEG")
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    sub = exif.get_ifd(0x8769)
    if taken is not None:
        sub[0x9003] = taken
    if offset is not None:
        sub[0x9011] = offset
    if isinstance(gps, dict):
        exif.get_ifd(0x8825).update(gps)
    elif gps is not None:
        lat, lon = gps
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[3] = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
        for tag, value in ((2, abs(lat)), (4, abs(lon))):
            d = int(value)
            m = int((value - d) * 60)
            s = round(((value - d) * 60 - m) * 60 * 1000)
            ifd[tag] = (IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 1000))
    with Image.open(path) as img:
        img.load()
        img.save(path, "JPEG", exif=exif)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def shape_image(color: str, shape: str, size: int = 64, background=(255, 255, 255)) -> Image.Image:
    """The picture :func:`draw_image` saves, in memory."""
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon(
            [(size // 2, size // 6), (size // 6, size * 5 // 6), (size * 5 // 6, size * 5 // 6)],
            fill=COLORS[color],
        )
    return img


VIDEO_SEGMENTS = [("red", "circle"), ("green", "square"), ("blue", "triangle")]


def make_video(
    path: Path,
    segments=VIDEO_SEGMENTS,
    seconds: float = 4.0,
    fps: int = 4,
    size: int = 64,
    codec: str = "mpeg4",
) -> Path:
    """A small video made with PyAV: one coloured shape per segment of ``seconds``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for color, shape in segments:
            img = shape_image(color, shape, size)
            for _ in range(round(seconds * fps)):
                frame = av.VideoFrame.from_image(img)
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


# Ray (2.60) turns token authentication on for every local instance it starts, by setting
# RAY_AUTH_MODE=token in os.environ: from then on every Ray user of the test process, and every
# CLI it starts, expects a token in ~/.ray, which the isolated HOME of each test does not have.
RAY_AUTH_MODE = "RAY_AUTH_MODE"


@contextlib.contextmanager
def ray_without_auth() -> Iterator[None]:
    """Run the block's Ray instances without token authentication, and leave RAY_AUTH_MODE as
    it was afterwards (for module-scoped fixtures, which the per-test monkeypatch of
    ``isolated_env`` does not cover)."""
    before = os.environ.get(RAY_AUTH_MODE)
    os.environ[RAY_AUTH_MODE] = "disabled"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RAY_AUTH_MODE, None)
        else:
            os.environ[RAY_AUTH_MODE] = before


@contextlib.contextmanager
def serving(index_dir: Path, *args: str, address: str = r"at (http://127\.0\.0\.1:\d+/)"):
    """`clipsearch --index DIR serve --port 0 ARGS` in a subprocess for the block: yields the
    match of ``address`` in the first line it prints (its address, and what else the pattern
    captures); stopped afterwards. Fails the test when it does not start within a minute."""
    import queue
    import re
    import subprocess
    import sys
    import threading

    import pytest

    proc = subprocess.Popen(
        [sys.executable, "-m", "clipsearch", "--index", str(index_dir), "serve", "--port", "0"]
        + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            line = ""
        match = re.search(address, line)
        if not match:
            proc.kill()
            pytest.fail(f"serve did not start: {line!r} {proc.communicate()[1]!r}")
        yield match
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the torch-free image towers' tests (tests/models, tests/style) -------------------------


def probe_pixels(size: int):  # noqa: ANN201 - a float32 array (N, 3, size, size)
    """The image towers' probe pictures, preprocessed as a model of that input size does."""
    import numpy as np

    from clipsearch.models.imagetower import probe_images
    from clipsearch.models.preprocess import ImagePreprocess

    pre = ImagePreprocess.from_config({"size": size})
    return np.stack([pre.pixels(img) for img in probe_images(size)])


def unit_rows(x):  # noqa: ANN001, ANN201 - a tensor or an array in, a float32 array out
    """Each row scaled to length 1."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def vit_b32_config():  # noqa: ANN201 - an ImageTowerConfig
    """The shape of open_clip's ViT-B/32 image tower (QuickGELU), for the engine policy."""
    from clipsearch.models.imagetower import ImageTowerConfig

    return ImageTowerConfig(
        224, 32, 768, 12, 12, 3072, 512, "quick", 1e-5, True, "tok", False, True
    )


def local_dir_model(tmp_path: Path, name: str = "tiny") -> str:
    """The ``local-dir:`` name of a tiny model saved under ``tmp_path / name``."""
    return f"local-dir:{save_tiny_model(tmp_path / name)}"


_CLI_REPORTING_IMPORTS = """
import json, sys
{setup}
from clipsearch.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def cli_in_a_new_process(
    argv: list[str], heavy: list[str], setup: str = ""
) -> tuple[dict, list[str], str]:
    """``clipsearch ARGV`` in a new Python process (the statements ``setup`` first, and one
    OpenMP thread): ``{"code": exit code, "loaded": which of the heavy modules it imported}``,
    the lines it printed before that, and all it printed (for assertion messages)."""
    import subprocess
    import sys

    script = _CLI_REPORTING_IMPORTS.format(setup=setup, heavy=list(heavy))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = {}
    return report, lines[:-1], proc.stdout + proc.stderr
