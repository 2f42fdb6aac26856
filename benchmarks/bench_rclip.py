"""clipsearch against rclip 3.3, the closest peer, side by side on the same photos (#18).

rclip is not a dependency of clipsearch and none of its code is in this repository: this
benchmark runs the installed ``rclip`` command as a child process, and skips with one line
when it is not installed. Install it in a virtual environment of its own::

    python3 -m venv /tmp/rclip-venv && /tmp/rclip-venv/bin/pip install rclip==3.3.0

Both tools run the same model: open_clip ``ViT-B-32-256`` (rclip's architecture) with random
weights from a fixed seed, saved as a safetensors checkpoint for clipsearch (``--model
ViT-B-32-256 --pretrained FILE``) and exported to the ONNX files rclip loads (see
``rclip_model.py``); their vectors are checked to agree first (cosine of the same photo and of
the same text, printed). Speed does not depend on the weights. clipsearch's cache is primed by
one first load, and rclip's model files are read once, before any clock.

Then, interleaved (the order of the tools alternating), median of ``--repeat`` runs, each
into a new index / a new rclip database:

* **index** ``--n`` 2 MP and ``--m`` 12 MP JPEGs: wall and peak RSS of ``clipsearch index`` at
  defaults, of ``clipsearch index --precision fp32`` and ``int8``, and of rclip indexing the
  same folder (``rclip QUERY`` run in it, which indexes the current folder first and then
  searches: the wall as a user sees it);
* **again, nothing changed**: ``clipsearch index`` of the 2 MP folder once more, against
  ``rclip QUERY`` there once more (it walks the folder, then searches);
* **cold text search** on the 2 MP index, a new process: ``clipsearch search QUERY`` against
  ``rclip --no-indexing QUERY``;
* **fixed start-up**: one 2 MP photo into a new index / database, wall; and for clipsearch
  the wall of the 2 MP run minus the time it prints (its start-up before the first file).

Ratios are rclip / clipsearch: above 1, clipsearch is better.

    python benchmarks/bench_rclip.py                          # 200 x 2 MP, 30 x 12 MP, 3 runs
    python benchmarks/bench_rclip.py --n 1000 --m 60 --repeat 5
    python benchmarks/bench_rclip.py --rclip ~/.local/bin/rclip

rclip's set-up, as read from rclip 3.3.0: its database is ``$RCLIP_DATADIR/db.sqlite3`` (here
a new temporary folder per run, holding links to the exported model); it reads its model
from the same folder and never goes to the network when the files are there
(``HF_HUB_OFFLINE=1`` is set besides); it indexes in batches of 8 (``--indexing-batch-size``)
with the fp32 ONNX model on ONNX Runtime's CPU provider, intra-op threads = usable cores, and
decodes with as many loader threads as cores (at most 16).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import (  # noqa: E402
    Row,
    compile_package,
    machine,
    print_table,
    ratio,
    run_child,
    write_photos,
)
from rclip_model import MODEL, export_onnx, rclip_datadir, save_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "clipsearch.cli.main"]
FALLBACK_RCLIP = "/tmp/rclip-venv/bin/rclip"
QUERY = "a dog on the beach"


def find_rclip(given: str | None) -> str | None:
    """The rclip command: ``--rclip``, else ``rclip`` on PATH, else the venv the docstring
    installs; None when none runs."""
    candidates = [given] if given else [shutil.which("rclip"), FALLBACK_RCLIP]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return None


class Tools:
    """The two commands, with the environment and folders each needs."""

    def __init__(self, rclip: str, weights: Path, models: Path, cache: Path) -> None:
        self.rclip, self.weights, self.models = rclip, weights, models
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.cs_env = {"XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}

    def cs_index(self, index: Path, folder: Path, *extra: str) -> tuple[float, float, float]:
        """Wall, peak RSS (MiB) and the seconds it prints, of ``clipsearch index``."""
        argv = [*CLI, "--index", str(index), "index", str(folder)]
        if not index.exists():
            argv += ["--model", MODEL, "--pretrained", str(self.weights)]
        wall, rss, out = run_child([*argv, *extra], self.cs_env)
        m = re.search(r" in ([0-9.]+)s", out)
        return wall, rss, float(m.group(1)) if m else float("nan")

    def cs_search(self, index: Path) -> tuple[float, float]:
        wall, rss, _ = run_child([*CLI, "--index", str(index), "search", QUERY], self.cs_env)
        return wall, rss

    def rclip_run(self, datadir: Path, folder: Path, *extra: str) -> tuple[float, float]:
        """Wall and peak RSS of ``rclip [extra] QUERY`` run in ``folder``, its database in
        ``datadir`` (made, with links to the model, when new). ``env -C`` changes folder and
        then execs rclip: the launcher measures rclip's own process."""
        if not datadir.exists():
            rclip_datadir(self.models, datadir)
        env = {"RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}
        argv = ["env", "-C", str(folder), self.rclip, *extra, "-t", "10", QUERY]
        wall, rss, _ = run_child(argv, env)
        return wall, rss


def rclip_python(rclip: str) -> str | None:
    """The interpreter of the rclip script (its ``#!`` line), to ask rclip's own model for a
    text vector; None for a launcher that is not a Python script."""
    try:
        with open(rclip, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError:
        return None
    return first[2:].strip() if first.startswith("#!") and "python" in first else None


RCLIP_TEXT = """
import json, sys
from rclip.model import Model
print(json.dumps(Model().compute_text_features([sys.argv[1]])[0].tolist()))
"""


def stored(index: Path) -> dict[str, np.ndarray]:
    """The vectors a clipsearch index stored, by file name (read from its catalog)."""
    with sqlite3.connect(index / "catalog.sqlite") as con:
        rows = con.execute("SELECT rel, data FROM images JOIN vectors ON id = image_id")
        return {Path(rel).name: np.frombuffer(data, np.float32) for rel, data in rows}


def agreement(tools: Tools, photos: list[Path], tmp: Path) -> list[str]:
    """How closely the two tools' vectors agree, as |1 - cosine| at worst over the photos:
    the vectors both stored for the same photos (clipsearch at its defaults, whose JPEG
    decoding is DCT-scaled, and with ``--precision bf16``, what the defaults give a large run
    on a CPU with bf16), the vectors of fully decoded pixels (as rclip decodes) and of a
    text; and, for scale, the cosine of two different photos."""
    from PIL import Image

    from clipsearch import ImageIndex

    folder = tmp / "agree"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    datadir = tmp / "agree-rclip"
    tools.rclip_run(datadir, folder)
    with sqlite3.connect(datadir / "db.sqlite3") as con:
        rows = con.execute("SELECT filepath, vector FROM images WHERE deleted IS NULL")
        theirs = {Path(p).name: np.frombuffer(v, np.float32) for p, v in rows}

    def worst(ours: dict[str, np.ndarray]) -> str:
        return (
            f"{max(abs(1 - float(v @ theirs[k]) / np.linalg.norm(v)) for k, v in ours.items()):.1e}"
        )

    lines = []
    variants = (("defaults", ()), ("--precision bf16", ("--precision", "bf16")),
                ("--precision int8", ("--precision", "int8")))  # fmt: skip
    for label, extra in variants:
        index = tmp / f"agree-{len(lines)}"
        tools.cs_index(index, folder, *extra)
        lines.append(f"agreement, stored image vectors, clipsearch {label} vs rclip: "
                     f"|1 - cosine| <= {worst(stored(index))}")  # fmt: skip
    os.environ["XDG_CACHE_HOME"] = tools.cs_env["XDG_CACHE_HOME"]
    ours = ImageIndex.open(index, precision="fp32")
    try:
        exact = {}
        for p in folder.iterdir():
            with Image.open(p) as im:
                exact[p.name] = ours.embed_pixels(im.convert("RGB"))
        lines.append(f"agreement, fully decoded pixels (as rclip decodes), fp32: "
                     f"|1 - cosine| <= {worst(exact)}")  # fmt: skip
        python = rclip_python(tools.rclip)
        if python:
            env = {**os.environ, "RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}
            out = subprocess.run([python, "-c", RCLIP_TEXT, QUERY], env=env, check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            text = float(ours.embed_text(QUERY) @ np.array(json.loads(out.splitlines()[-1])))
            lines.append(f"agreement, text {QUERY!r}: |1 - cosine| = {abs(1 - text):.1e}")
    finally:
        ours.close()
    a, b = sorted(theirs)[:2]
    lines.append(
        f"for scale, two different photos (rclip): cosine {float(theirs[a] @ theirs[b]):.3f}"
    )
    return lines


def measure(tools: Tools, sets: dict[str, Path], one: Path, repeat: int) -> dict[str, list]:
    """Every figure of one run per repeat, the tools' order alternating between repeats."""
    runs: dict[str, list] = {}
    first = next(iter(sets))
    for r in range(repeat):
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            groups = [
                [
                    (f"cs {name}", partial(tools.cs_index, tmp / f"cs-{name}", folder)),
                    (f"cs32 {name}", partial(tools.cs_index, tmp / f"cs32-{name}", folder,
                                             "--precision", "fp32")),
                    (f"cs8 {name}", partial(tools.cs_index, tmp / f"cs8-{name}", folder,
                                            "--precision", "int8")),
                    (f"rc {name}", partial(tools.rclip_run, tmp / f"rc-{name}", folder)),
                ]
                for name, folder in sets.items()
            ]  # fmt: skip
            # On the indexes just made: again with nothing changed, then a search; last, the
            # start-up with one photo.
            cs, rc, folder = tmp / f"cs-{first}", tmp / f"rc-{first}", sets[first]
            groups += [
                [("cs again", partial(tools.cs_index, cs, folder)),
                 ("rc again", partial(tools.rclip_run, rc, folder))],
                [("cs search", partial(tools.cs_search, cs)),
                 ("rc search", partial(tools.rclip_run, rc, folder, "-n"))],
                [("cs one", partial(tools.cs_index, tmp / "cs-one", one)),
                 ("rc one", partial(tools.rclip_run, tmp / "rc-one", one))],
            ]  # fmt: skip
            for group in groups:
                for key, job in group if r % 2 == 0 else group[::-1]:
                    runs.setdefault(key, []).append(job())
            for name, folder in sets.items():  # rclip skips unreadable files with a message
                with sqlite3.connect(tmp / f"rc-{name}" / "db.sqlite3") as con:
                    (count,) = con.execute("SELECT count(*) FROM images").fetchone()
                if count != len(list(folder.iterdir())):
                    raise RuntimeError(f"rclip indexed {count} of the files in {folder}")
        print(f"run {r + 1}/{repeat} done", flush=True)
    return runs


def rows_of(runs: dict[str, list], sets: dict[str, Path], counts: dict[str, int]) -> list[Row]:
    def wall(key: str) -> float:
        return statistics.median(v[0] for v in runs[key])

    def rss(key: str) -> float:
        return max(v[1] for v in runs[key])

    def time_row(figure: str, ours: str, theirs: str) -> Row:
        a, b = wall(ours), wall(theirs)
        mem = f"{rss(ours):.0f} MiB vs {rss(theirs):.0f} MiB"
        return Row(figure, f"{a:.2f} s", f"{b:.2f} s", ratio(a, b, higher_is_better=False), mem)

    def rss_row(figure: str, ours: str, theirs: str) -> Row:
        a, b = rss(ours), rss(theirs)
        return Row(figure, f"{a:.0f} MiB", f"{b:.0f} MiB", ratio(a, b, higher_is_better=False))

    rows = []
    for name in sets:
        n = counts[name]
        rows += [
            time_row(f"index {n} x {name}, defaults, wall", f"cs {name}", f"rc {name}"),
            rss_row(f"index {n} x {name}, defaults, peak RSS", f"cs {name}", f"rc {name}"),
            time_row(f"index {n} x {name}, --precision fp32, wall", f"cs32 {name}", f"rc {name}"),
            rss_row(f"index {n} x {name}, --precision fp32, peak RSS",
                    f"cs32 {name}", f"rc {name}"),
            time_row(f"index {n} x {name}, --precision int8, wall", f"cs8 {name}", f"rc {name}"),
            rss_row(f"index {n} x {name}, --precision int8, peak RSS",
                    f"cs8 {name}", f"rc {name}"),
        ]  # fmt: skip
    first = next(iter(sets))
    n = counts[first]
    rows += [
        time_row(f"`index` again, nothing changed, {n} files (rclip: walk + a search)",
                 "cs again", "rc again"),
        time_row(f"cold text search, {n} indexed (rclip --no-indexing)", "cs search", "rc search"),
        time_row("fixed start-up: 1 photo into a new index / database, wall", "cs one", "rc one"),
    ]  # fmt: skip
    printed = statistics.median(v[0] - v[2] for v in runs[f"cs {first}"])
    rows.append(Row(f"clipsearch start-up of the {n}-photo run: wall minus its printed time",
                    f"{printed:.2f} s", "-", "-", "-"))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="2 MP photos to index")
    ap.add_argument("--m", type=int, default=30, help="12 MP photos to index")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--rclip", help="the rclip command (default: rclip on PATH, else "
                    f"{FALLBACK_RCLIP})")  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench-rclip"))
    args = ap.parse_args()

    rclip = find_rclip(args.rclip)
    if rclip is None:
        print("bench_rclip: skipped: rclip not found (pip install rclip==3.3.0 in a venv of "
              "its own, then pass --rclip PATH)")  # fmt: skip
        return
    version = subprocess.run([rclip, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine()}")
    print(f"baseline: {version or 'rclip'} ({rclip})")
    compile_package()  # children import the bytecode, as from an installed package

    sets = {
        "2 MP": write_photos(args.work / f"photos-2mp-{args.n}", args.n, 1632, 1224),
        "12 MP": write_photos(args.work / f"photos-12mp-{args.m}", args.m),
    }
    weights = save_weights(args.work)
    models = export_onnx(weights, args.work / "rclip-model")
    tools = Tools(rclip, weights, models, args.work / "cache")
    one = args.work / "one-photo"
    if not one.exists():
        one.mkdir()
        shutil.copy(sets["2 MP"][0], one / sets["2 MP"][0].name)
    with tempfile.TemporaryDirectory() as t:
        # The first load: clipsearch fills its cache, rclip's model files are read once.
        tools.cs_index(Path(t) / "prime-cs", one)
        tools.cs_index(Path(t) / "prime-cs8", one, "--precision", "int8")  # its int8 model
        tools.rclip_run(Path(t) / "prime-rc", one)
        for line in agreement(tools, sets["2 MP"][:3], Path(t)):
            print(line)

    folders = {k: v[0].parent for k, v in sets.items()}
    runs = measure(tools, folders, one, args.repeat)
    counts = {k: len(v) for k, v in sets.items()}
    title = (f"clipsearch against {version or 'rclip'} (baseline), {MODEL} random weights "
             f"in both; ratio = rclip / clipsearch, above 1: clipsearch better")  # fmt: skip
    print_table(title, rows_of(runs, folders, counts))


if __name__ == "__main__":
    main()
