"""bench_gpu.py runs its whole course on the CPU at a tiny size (its figures are not checked
here: they belong in benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_bench_gpu_runs_on_the_cpu(tmp_path):
    args = ["--device", "cpu", "--models", "ViT-B-32", "--n", "4", "--size", "320x240"]
    args += ["--naive-n", "2", "--ref-n", "2", "--warm", "1", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(BENCH), *args, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    assert "| ViT-B-32: naive loop" in out
    assert "ViT-B-32: clipsearch, CPU decoding (PIL, DCT draft) (4 images)" in out
    assert "ViT-B-32: clipsearch, device decoding (torchvision on the CPU) (4 images)" in out
    cosines = [line for line in out.splitlines() if "cosine to CPU fp32" in line]
    assert len(cosines) == 3
    for line in cosines:  # the tiny run's vectors agree with the reference to 3 decimals
        assert float(line.split("|")[2].split("/")[0]) >= 0.999
