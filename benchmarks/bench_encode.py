"""The encode path: start-up, peak memory and fp32 speed, each against plain open_clip.

For each model (random weights saved to disk as a safetensors file: speed and memory do not
depend on the weights), with clipsearch's cache primed by one earlier load:

* **start-up**: ``clipsearch index`` of a folder holding one 12 MP photo into a new index, as a
  user runs it (a fresh process), from the command to its end: the first image encoded and
  committed. Baselines: ``import open_clip`` + ``create_model`` + encoding that photo, and the
  same clipsearch command with an empty cache (the whole model through open_clip, as before);
* **peak memory** while indexing 12 MP JPEGs at default settings (peak RSS of the process),
  against a naive open_clip loop (PIL, open_clip's preprocess, ``encode_image`` per image,
  fp32: what a simple tool does) and against clipsearch with an empty cache;
* **the NumPy path** (#18): ``clipsearch index`` when one new photo joined an indexed folder,
  which the defaults encode with the NumPy image tower (no torch import), against the torch
  path in the same run (``--precision bf16``, what ``auto`` gives on a bf16 CPU; interleaved):
  the wall time from the command to the first image encoded and to the end, and the peak
  RSS; the NumPy tower's fp32 rate against the torch tower's (bf16 and fp32) on batches, and
  from these the run size up to which NumPy finishes first (``NUMPY_MAX_GFLOP``);
* **the ONNX Runtime path** (#18): the same, for a run past NumPy's size (every run made so
  with ``engines.NUMPY_MAX_GFLOP = 0`` in the child) that the defaults give to ONNX Runtime
  fp32, against the torch path (``--precision bf16``) in the same run; ONNX Runtime's rate
  against torch bf16's, and from these the run size up to which it finishes first on a bf16
  CPU (``ONNX_MAX_GFLOP``);
* **fp32 throughput** of the image tower on preprocessed batches, ours against open_clip's
  ``encode_image`` (the same weights, interleaved rounds), ONNX Runtime's tower and int8
  dynamic quantisation of the MLP's linear layers beside it with their cosines; and end to
  end, ``clipsearch index --precision fp32`` against the naive loop on 2 MP photos.

    python benchmarks/bench_encode.py                      # ViT-B-32 and ViT-B-16, 8 photos
    python benchmarks/bench_encode.py --models ViT-B-32 --photos 16 --repeat 5

The children run ``python -m clipsearch.cli.main`` from the current directory.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import (  # noqa: E402
    Row,
    compile_package,
    machine,
    print_table,
    random_weights,
    ratio,
    run_child,
    write_photos,
)

CLI = [sys.executable, "-m", "clipsearch.cli.main"]
TORCH_ONLY = [sys.executable, "-c", "import torch"]

# A plain open_clip tool: import, create the model from the weights file, encode each photo.
NAIVE = """
import sys, time
import torch, open_clip
from PIL import Image
model, _, preprocess = open_clip.create_model_and_transforms(sys.argv[1], pretrained=sys.argv[2])
model.eval()
t = time.perf_counter()
with torch.no_grad():
    for path in sys.argv[3:]:
        model.encode_image(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
print(f"{len(sys.argv) - 3} {time.perf_counter() - t}")
"""


# The CLI, printing the moment (perf_counter: CLOCK_MONOTONIC, the same in every process)
# its first batch of images is encoded, by either encoder.
FIRST_ENCODED = """
import os, sys, time
from clipsearch.models import cpuencoder, encoder, engines
if os.environ.get("BENCH_PAST_NUMPY"):  # any run is past NumPy's size: ONNX Runtime or torch
    engines.NUMPY_MAX_GFLOP = 0.0

def stamp(cls):
    real = cls.encode_batch

    def first(self, pixels):
        out = real(self, pixels)
        print(f"first-encoded {time.perf_counter()}", flush=True)
        cls.encode_batch = real
        return out

    cls.encode_batch = first

stamp(encoder.Encoder)
stamp(cpuencoder.CpuImageEncoder)  # NumPy and ONNX Runtime
from clipsearch.cli.main import main
main(sys.argv[1:])
"""


def index_cmd(index: Path, folder: Path, model: str, weights: Path, *extra: str) -> list[str]:
    return [*CLI, "--index", str(index), "index", str(folder), "--model", model,
            "--pretrained", str(weights), *extra]  # fmt: skip


def fresh_index_run(
    folder: Path, model: str, weights: Path, cache: Path | None, *extra: str
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``clipsearch index`` into a new index; with
    ``cache`` None, an empty clipsearch cache (the whole model through open_clip)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"XDG_CACHE_HOME": str(cache or Path(tmp) / "cache")}
        wall, rss, _ = run_child(index_cmd(Path(tmp) / "idx", folder, model, weights, *extra), env)
    return wall, rss


def median_of(repeat: int, fn) -> tuple[float, float]:  # noqa: ANN001
    runs = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def add_one_photo(
    tmp: Path, model: str, weights: Path, cache: Path, photos: list[Path], repeat: int
) -> tuple[float, float]:
    """Median wall and peak RSS of ``clipsearch index`` when one new photo joined an indexed
    folder (a new one each run)."""
    folder, index = tmp / "growing", tmp / "growing-idx"
    folder.mkdir()
    shutil.copy(photos[0], folder / "first.jpg")
    run_child(index_cmd(index, folder, model, weights), {"XDG_CACHE_HOME": str(cache)})
    runs = []
    for i in range(repeat):
        shutil.copy(photos[1 + i % (len(photos) - 1)], folder / f"new-{i}.jpg")
        env = {"XDG_CACHE_HOME": str(cache)}
        runs.append(run_child(index_cmd(index, folder, model, weights), env)[:2])
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def startup_and_memory(args, model: str, weights: Path, cache: Path, photos: list[Path]) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        one.mkdir()
        shutil.copy(photos[0], one / photos[0].name)
        ours, ours_rss = median_of(args.repeat, lambda: fresh_index_run(one, model, weights, cache))
        naive_argv = [sys.executable, "-c", NAIVE, model, str(weights), str(photos[0])]
        base, base_rss = median_of(args.repeat, lambda: run_child(naive_argv)[:2])
        cold, cold_rss = median_of(args.repeat, lambda: fresh_index_run(one, model, weights, None))
        floor, floor_rss = median_of(args.repeat, lambda: run_child(TORCH_ONLY)[:2])
        add, add_rss = add_one_photo(Path(tmp), model, weights, cache, photos, args.repeat)
    rows.append(Row(f"{model}: `index` of 1 photo, command to end, cache primed", f"{ours:.2f} s",
                    f"{base:.2f} s", ratio(ours, base, higher_is_better=False),
                    f"{ours_rss:.0f} MiB"))  # fmt: skip
    rows.append(Row(f"{model}: the same, empty cache (whole model via open_clip)",
                    f"{cold:.2f} s", f"{base:.2f} s", ratio(cold, base, higher_is_better=False),
                    f"{cold_rss:.0f} MiB"))  # fmt: skip
    rows.append(Row(f"{model}: one more photo into an existing index", f"{add:.2f} s",
                    f"{base:.2f} s", ratio(add, base, higher_is_better=False),
                    f"{add_rss:.0f} MiB"))  # fmt: skip
    rows.append(Row("the floor of both: `python -c \"import torch\"`", f"{floor:.2f} s",
                    f"{base:.2f} s", ratio(floor, base, higher_is_better=False),
                    f"{floor_rss:.0f} MiB"))  # fmt: skip
    folder = photos[0].parent
    n = len(photos)
    wall, rss = median_of(args.repeat, lambda: fresh_index_run(folder, model, weights, cache))
    naive_argv = [sys.executable, "-c", NAIVE, model, str(weights), *map(str, photos)]
    nwall, nrss = median_of(args.repeat, lambda: run_child(naive_argv)[:2])
    cwall, crss = median_of(1, lambda: fresh_index_run(folder, model, weights, None))
    rows.append(Row(f"{model}: `index` of {n} 12 MP JPEGs, defaults, peak RSS",
                    f"{rss:.0f} MiB", f"{nrss:.0f} MiB", ratio(rss, nrss, higher_is_better=False),
                    f"wall {wall:.1f} s vs {nwall:.1f} s"))  # fmt: skip
    rows.append(Row(f"{model}: the same, empty cache, peak RSS", f"{crss:.0f} MiB",
                    f"{nrss:.0f} MiB", ratio(crss, nrss, higher_is_better=False),
                    f"wall {cwall:.1f} s"))  # fmt: skip
    return rows


def first_encoded_run(
    index: Path,
    folder: Path,
    model: str,
    weights: Path,
    cache: Path,
    *extra: str,
    past_numpy: bool = False,
) -> tuple[float, float, float]:
    """Seconds from the command to its first image encoded, to its end, and its peak RSS
    (MiB), of one ``clipsearch index`` run (the launcher's own start counts in the first);
    ``past_numpy``: as a run too large for the NumPy tower."""
    argv = index_cmd(index, folder, model, weights, *extra)
    argv = [sys.executable, "-c", FIRST_ENCODED, *argv[3:]]  # the CLI, stamped
    env = {"XDG_CACHE_HOME": str(cache), **({"BENCH_PAST_NUMPY": "1"} if past_numpy else {})}
    t0 = time.perf_counter()
    wall, rss, out = run_child(argv, env)
    stamps = [float(line.split()[1]) for line in out.splitlines() if line.startswith("first-")]
    return (stamps[0] - t0 if stamps else float("nan")), wall, rss


def numpy_path(args, model: str, weights: Path, cache: Path, photos: list[Path],
               past_numpy: bool = False) -> dict:  # fmt: skip
    """One new photo into an indexed folder, the defaults (the NumPy path; ``past_numpy``:
    ONNX Runtime) and the torch path (``--precision bf16``) interleaved; medians of
    first-encoded and end, peak RSS."""
    runs: dict[str, list[tuple[float, float, float]]] = {"fast": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder, index = Path(tmp) / "growing", Path(tmp) / "growing-idx"
        folder.mkdir()
        shutil.copy(photos[0], folder / "first.jpg")
        run_child(index_cmd(index, folder, model, weights), {"XDG_CACHE_HOME": str(cache)})
        for i in range(args.repeat):
            for j, (path, extra) in enumerate((("fast", ()), ("torch", ("--precision", "bf16")))):
                photo = photos[1 + (2 * i + j) % (len(photos) - 1)]
                shutil.copy(photo, folder / f"new-{path}-{i}.jpg")
                runs[path].append(first_encoded_run(index, folder, model, weights, cache, *extra,
                                                    past_numpy=past_numpy))  # fmt: skip
    return {
        k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
            max(r[2] for r in v))
        for k, v in runs.items()
    }  # fmt: skip


def tower_rates(model: str, weights: Path, batch: int, rounds: int) -> dict:
    """img/s of the NumPy tower (fp32) and of our torch tower (bf16, fp32) on one batch,
    interleaved rounds, best of each; the NumPy vectors' max difference to torch fp32."""
    import numpy as np
    import open_clip
    import torch

    from clipsearch.models.imagetower import build_tower, describe
    from clipsearch.models.npimagetower import NumpyImageTower
    from clipsearch.models.onnxtower import OnnxImageTower

    oc = open_clip.create_model(model, pretrained=str(weights)).eval()
    config = describe(oc)
    assert config is not None, model
    state = {k: v.detach().clone() for k, v in oc.visual.state_dict().items()}
    del oc
    fp32 = build_tower(config, state)
    bf16 = build_tower(config, {k: v.to(torch.bfloat16) for k, v in state.items()})
    numpy_tower = NumpyImageTower(config, {k: v.numpy() for k, v in state.items()})
    onnx_tower = OnnxImageTower(config, {k: v.numpy() for k, v in state.items()}, None)
    x = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator())
    xn = x.numpy()
    variants = {
        "numpy": lambda: numpy_tower(xn),
        "onnx": lambda: onnx_tower(xn),
        "torch bf16": lambda: bf16(x.to(torch.bfloat16)),
        "torch fp32": lambda: fp32(x),
    }
    best = dict.fromkeys(variants, float("inf"))
    with torch.inference_mode():
        want = torch.nn.functional.normalize(fp32(x), dim=-1).numpy()
        got = numpy_tower(xn)
        got = got / np.linalg.norm(got, axis=-1, keepdims=True)
        onnx_got = onnx_tower(xn)
        onnx_got = onnx_got / np.linalg.norm(onnx_got, axis=-1, keepdims=True)
        for _ in range(rounds):
            for name, f in variants.items():
                t = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t)
    rates = {k: batch / v for k, v in best.items()}
    return {"rates": rates, "diff": float(np.abs(got - want).max()), "gflop": config.gflop,
            "onnx_diff": float(np.abs(onnx_got - want).max())}  # fmt: skip


def numpy_rows(model: str, path: dict, tower: dict | None, batch: int) -> list[Row]:
    (nf, ne, nrss), (tf, te, trss) = path["fast"], path["torch"]
    rows = [
        Row(f"{model}: one more photo, command to first encoded, NumPy (defaults) vs torch bf16",
            f"{nf:.2f} s", f"{tf:.2f} s", ratio(nf, tf, higher_is_better=False),
            f"{nrss:.0f} MiB vs {trss:.0f} MiB"),
        Row(f"{model}: the same, command to end", f"{ne:.2f} s", f"{te:.2f} s",
            ratio(ne, te, higher_is_better=False), "-"),
    ]  # fmt: skip
    if tower is None:
        return rows
    r = tower["rates"]
    rows += [
        Row(f"{model}: NumPy tower fp32, batch {batch}, vs torch tower bf16",
            f"{r['numpy']:.2f} img/s", f"{r['torch bf16']:.2f} img/s",
            ratio(r["numpy"], r["torch bf16"]), f"max diff to torch fp32 {tower['diff']:.1e}"),
        Row(f"{model}: NumPy tower fp32, batch {batch}, vs torch tower fp32",
            f"{r['numpy']:.2f} img/s", f"{r['torch fp32']:.2f} img/s",
            ratio(r["numpy"], r["torch fp32"]), "-"),
    ]  # fmt: skip
    per_image = 1 / r["numpy"] - 1 / r["torch bf16"]  # what NumPy loses on each image
    saved = tf - nf  # what it saves once: torch's import and load
    if per_image > 0:
        n = saved / per_image
        note = f"{saved:.2f} s saved, {per_image * 1000:.0f} ms lost per image"
        rows.append(Row(f"{model}: images up to which NumPy finishes first (GFLOP of work)",
                        f"{n:.0f} ({n * tower['gflop']:.0f} GFLOP)", "-", "-", note))  # fmt: skip
    return rows


def onnx_rows(model: str, path: dict, tower: dict, batch: int) -> list[Row]:
    """The ONNX Runtime path against torch bf16: start-up, memory, rate, break-even."""
    (of, oe, orss), (tf, te, trss) = path["fast"], path["torch"]
    r = tower["rates"]
    rows = [
        Row(f"{model}: a run past NumPy's size, command to first encoded, ONNX Runtime "
            "(defaults) vs torch bf16", f"{of:.2f} s", f"{tf:.2f} s",
            ratio(of, tf, higher_is_better=False), f"{orss:.0f} MiB vs {trss:.0f} MiB"),
        Row(f"{model}: the same, command to end (one photo)", f"{oe:.2f} s", f"{te:.2f} s",
            ratio(oe, te, higher_is_better=False), "-"),
        Row(f"{model}: ONNX Runtime tower fp32, batch {batch}, vs torch tower bf16",
            f"{r['onnx']:.2f} img/s", f"{r['torch bf16']:.2f} img/s",
            ratio(r["onnx"], r["torch bf16"]),
            f"max diff to torch fp32 {tower['onnx_diff']:.1e}"),
        Row(f"{model}: ONNX Runtime tower fp32, batch {batch}, vs torch tower fp32",
            f"{r['onnx']:.2f} img/s", f"{r['torch fp32']:.2f} img/s",
            ratio(r["onnx"], r["torch fp32"]), "-"),
    ]  # fmt: skip
    per_image = 1 / r["onnx"] - 1 / r["torch bf16"]  # what ORT loses on each image
    saved = tf - of  # what it saves once: torch's import and load, less ORT's
    if per_image > 0:
        n = saved / per_image
        note = f"{saved:.2f} s saved, {per_image * 1000:.0f} ms lost per image"
        rows.append(Row(f"{model}: images up to which ONNX Runtime finishes first on a bf16 "
                        "CPU (GFLOP of work)", f"{n:.0f} ({n * tower['gflop']:.0f} GFLOP)",
                        "-", "-", note))  # fmt: skip
    return rows


def tower_throughput(model: str, weights: Path, batch: int, rounds: int) -> list[Row]:
    """fp32 img/s of our tower and of open_clip's encode_image, interleaved; ONNX Runtime's
    tower and int8 beside."""
    import open_clip
    import torch

    from clipsearch.models.imagetower import build_tower, describe
    from clipsearch.models.onnxtower import OnnxImageTower

    oc = open_clip.create_model(model, pretrained=str(weights)).eval()
    config = describe(oc)
    assert config is not None, model
    ours = build_tower(config, {k: v.clone() for k, v in oc.visual.state_dict().items()})
    with torch.inference_mode():
        int8 = torch.ao.quantization.quantize_dynamic(ours, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator())
    arrays = {k: v.detach().clone().numpy() for k, v in oc.visual.state_dict().items()}
    onnx_tower = OnnxImageTower(config, arrays, None)
    variants = {
        "open_clip": oc.encode_image,
        "ours": ours,
        "onnx": lambda x: torch.from_numpy(onnx_tower(x.numpy())),
        "int8": int8,
    }
    best = dict.fromkeys(variants, float("inf"))
    out = {}
    with torch.inference_mode():
        for name, f in variants.items():  # warm up
            out[name] = torch.nn.functional.normalize(f(x).float(), dim=-1)
        for _ in range(rounds):
            for name, f in variants.items():
                t = time.perf_counter()
                f(x)
                best[name] = min(best[name], time.perf_counter() - t)
    rate = {k: batch / v for k, v in best.items()}
    cos_ours = float((out["ours"] * out["open_clip"]).sum(-1).min())
    diff = float((out["ours"] - out["open_clip"]).abs().max())
    cos_int8 = float((out["int8"] * out["open_clip"]).sum(-1).min())
    onnx_diff = float((out["onnx"] - out["open_clip"]).abs().max())
    return [
        Row(f"{model}: image tower fp32, batch {batch}, ours vs open_clip",
            f"{rate['ours']:.2f} img/s", f"{rate['open_clip']:.2f} img/s",
            ratio(rate["ours"], rate["open_clip"]), f"max diff {diff:.1e}, cos {cos_ours:.7f}"),
        Row(f"{model}: image tower fp32, batch {batch}, ONNX Runtime vs open_clip",
            f"{rate['onnx']:.2f} img/s", f"{rate['open_clip']:.2f} img/s",
            ratio(rate["onnx"], rate["open_clip"]), f"max diff {onnx_diff:.1e}"),
        Row(f"{model}: image tower fp32, batch {batch}, ONNX Runtime vs ours (torch)",
            f"{rate['onnx']:.2f} img/s", f"{rate['ours']:.2f} img/s",
            ratio(rate["onnx"], rate["ours"]), "-"),
        Row(f"{model}: the same, int8 dynamic (linear layers of the MLP)",
            f"{rate['int8']:.2f} img/s", f"{rate['open_clip']:.2f} img/s",
            ratio(rate["int8"], rate["open_clip"]), f"cos to fp32 (min) {cos_int8:.5f}"),
    ]  # fmt: skip


def fp32_end_to_end(args, model: str, weights: Path, cache: Path, work: Path) -> list[Row]:
    photos = write_photos(work / "photos-2mp", args.photos, 1632, 1224)
    folder = photos[0].parent
    n = len(photos)
    walls = {"ours": [], "naive": []}
    naive_argv = [sys.executable, "-c", NAIVE, model, str(weights), *map(str, photos)]
    for _ in range(args.repeat):  # interleaved
        walls["ours"].append(
            fresh_index_run(folder, model, weights, cache, "--precision", "fp32")[0]
        )
        walls["naive"].append(run_child(naive_argv)[0])
    ours, naive = (min(walls[k]) for k in ("ours", "naive"))
    return [Row(f"{model}: `index --precision fp32` of {n} 2 MP JPEGs, wall (best)",
                f"{n / ours:.2f} img/s", f"{n / naive:.2f} img/s", ratio(n / ours, n / naive),
                f"{ours:.1f} s vs {naive:.1f} s")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    ap.add_argument("--photos", type=int, default=8, help="12 MP (and 2 MP) photos to index")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--batch", type=int, default=16, help="batch of the tower throughput")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["startup", "numpy", "onnx", "tower", "fp32"]
    )
    args = ap.parse_args()

    print(f"machine: {machine()}")
    compile_package()  # children import the bytecode, as from an installed package
    photos = write_photos(args.work / "photos-12mp", args.photos)
    rows: list[Row] = []
    for model in args.models:
        weights = random_weights(args.work, model)
        cache = args.work / f"encode-cache-{model}"
        with tempfile.TemporaryDirectory() as tmp:  # prime the cache: one load via open_clip
            one = Path(tmp) / "one"
            one.mkdir()
            shutil.copy(photos[0], one / photos[0].name)
            fresh_index_run(one, model, weights, cache)
        if "startup" not in args.skip:
            rows += startup_and_memory(args, model, weights, cache, photos)
        tower = None
        if "numpy" not in args.skip or "onnx" not in args.skip:
            tower = tower_rates(model, weights, args.batch, max(2, args.repeat))
        if "numpy" not in args.skip:
            path = numpy_path(args, model, weights, cache, photos)
            rows += numpy_rows(model, path, tower, args.batch)
        if "onnx" not in args.skip:
            path = numpy_path(args, model, weights, cache, photos, past_numpy=True)
            rows += onnx_rows(model, path, tower, args.batch)
        if "tower" not in args.skip:
            rows += tower_throughput(model, weights, args.batch, args.repeat)
        if "fp32" not in args.skip:
            rows += fp32_end_to_end(args, model, weights, cache, args.work)
        print_table("The encode path: clipsearch against plain open_clip", rows)


if __name__ == "__main__":
    main()
