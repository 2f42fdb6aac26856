"""No change, no cost: `clipsearch index` over a folder where nothing changed.

A folder of small generated PNGs is indexed once with the demo model; then the same
``clipsearch index`` runs again, as a user runs it (a fresh process each time), with nothing
to encode: the walk, the catalog comparison and the process start are all it should cost. The
run also reports which of torch, open_clip and faiss the no-op run imported.

Baseline, in the same run: ``python -c "import open_clip"``, the start of any open_clip-based
tool before it does anything.

    python benchmarks/bench_startup.py                       # 1,000 and 10,000 files
    python benchmarks/bench_startup.py --files 1000 100000 --repeat 3

The children run ``python -m clipsearch.cli.main`` from the current directory: to measure
another checkout's code (say, before a change), run this script from that checkout's root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import (  # noqa: E402
    Row,
    compile_package,
    machine,
    print_table,
    ratio,
    run_child,
    run_child_cpu,
)

CLI = [sys.executable, "-m", "clipsearch.cli.main"]

# The CLI in this process, then the heavy libraries it imported.
_IMPORTS = """
import json, sys
from clipsearch.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in ("torch", "open_clip", "faiss", "sqlalchemy") if m in sys.modules]))
"""


def write_small_pngs(folder: Path, n: int) -> None:
    """``n`` distinct 16x16 PNGs, 100 per sub-folder."""
    from PIL import Image

    for i in range(n):
        sub = folder / f"d{i // 100:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        colour = (i % 256, (i // 256) % 256, (i * 7) % 256)
        Image.new("RGB", (16, 16), colour).save(sub / f"{i:06d}.png")


def median_run(argv: list[str], repeat: int) -> tuple[float, float, str, float]:
    """Median wall seconds, the largest peak RSS (MiB), the last stdout and the median CPU
    seconds (user + system) of ``repeat`` runs."""
    runs = [run_child_cpu(argv) for _ in range(repeat)]
    wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 2))
    return wall, max(r[1] for r in runs), runs[-1][3], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    args = ap.parse_args()

    compile_package()
    plain = [sys.executable, "-c", "import open_clip"]
    base, base_rss, _, base_cpu = median_run(plain, args.repeat)
    # What a no-op run cannot go below, and what its catalog imported before it read in
    # plain sqlite3 (SQLAlchemy's ORM), each as a process of its own.
    floor = median_run([sys.executable, "-c", "pass"], args.repeat)[0]
    orm = median_run([sys.executable, "-c", "import sqlalchemy.orm"], args.repeat)[0]
    rows, notes = [], []
    for n in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            folder, index = Path(tmp) / "photos", Path(tmp) / "idx"
            write_small_pngs(folder, n)
            command = ["--index", str(index), "index", str(folder), "--model", "demo"]
            first = run_child([*CLI, *command])
            wall, rss, out, cpu = median_run([*CLI, *command], args.repeat)
            probe = subprocess.run(
                [sys.executable, "-c", _IMPORTS, *command],
                capture_output=True,
                text=True,
                check=True,
            )
            loaded = json.loads(probe.stdout.strip().splitlines()[-1])
        rows.append(
            Row(
                f"no-op index, {n:,} unchanged files (median of {args.repeat})",
                f"{wall:.2f} s",
                f"{base:.2f} s",
                ratio(wall, base, higher_is_better=False),
                f"{rss:.0f} MiB",
            )
        )
        rows.append(
            Row(
                "  CPU time (user + system), median",
                f"{cpu:.2f} s",
                f"{base_cpu:.2f} s",
                ratio(cpu, base_cpu, higher_is_better=False),
            )
        )
        notes.append(
            f"{n:,} files: first index {first[0]:.1f} s; no-op says {out.strip()!r}; "
            f"imported {', '.join(loaded) or 'none of torch, open_clip, faiss, sqlalchemy'}"
        )
    rows.append(Row("for reference: `python -c pass` (median)", f"{floor:.2f} s"))
    rows.append(Row("for reference: `python -c 'import sqlalchemy.orm'` (median)", f"{orm:.2f} s"))
    print(f"machine: {machine()}; small PNGs, demo model")
    print_table("Start-up: `clipsearch index` when nothing changed", rows)
    print(f'baseline: `python -c "import open_clip"`, {base_rss:.0f} MiB peak')
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
