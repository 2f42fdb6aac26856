"""``python -m clipsearch.demo`` through click's CliRunner: help, the samples it writes, and
errors that stay on one line."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipsearch.demo import synth
from clipsearch.demo.cli import cli
from clipsearch.models.identity import DEMO_DIR

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: object) -> click.testing.Result:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_group_lists_every_command(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("build", "finetune", "bilingual", "eval", "samples", "style-head"):
        assert re.search(rf"^  {command}\s+\S", result.output, re.MULTILINE), command


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("build", ["--minutes FLOAT", "default: 65.0", "default: 0.001", "--resume"]),
        ("finetune", ["default: 15.0", "--base", "--warmup", "--no-style-head", "--image-size"]),
        ("bilingual", ["default: 35.0", "--base", "--korean", "default: 0.5", "default: 96"]),
        ("eval", ["--model", "default: demo", "default: 600", "default: 3", "--lang"]),
        ("samples", ["--out", "default: sample_images", "default: 150", "default: 4"]),
        ("style-head", ["--out", "default: 2000", "default: 5"]),
    ],
)
def test_help_of_each_command(run, command, options):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert result.output.startswith(f"Usage: cli {command} [OPTIONS]")
    text = " ".join(result.output.split())
    for option in options:
        assert option in text, option


def test_samples_writes_pictures_and_their_captions(run, tmp_path):
    out = tmp_path / "samples"
    result = run("samples", "--out", out, "-n", 12, "--seed", 2)
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote 12 pictures and captions.jsonl to {out}\n"
    pictures = sorted(out.glob("*.jpg"))
    assert len(pictures) == 12
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [p.name for p in pictures]
    assert {r["style"] for r in records} == set(synth.STYLES)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p.name for p in pictures), "captions.jsonl"]
    )  # no temp files


def test_samples_repeat_the_shipped_sample_images(run, tmp_path):
    shipped = REPO / "sample_images"
    out = tmp_path / "again"
    assert run("samples", "--out", out).exit_code == 0
    names = sorted(p.name for p in shipped.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert (out / name).read_bytes() == (shipped / name).read_bytes(), name


@pytest.mark.parametrize("command", ["build", "finetune"])
def test_unknown_label_facts_are_refused_before_training(run, tmp_path, command):
    result = run(
        command, "--steps", 1, "--out", tmp_path / "out", "--work-dir", tmp_path / "work",
        "--label-loss", 1, "--label-facts", "style,colour",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith(
        "clipsearch: error: unknown label facts colour; choose from style, position"
    )
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "--steps", "1", "--base", "{tmp}/nothing"], "no demo model in"),
        (["bilingual", "--steps", "1", "--base", "{tmp}/nothing"], "no demo model in"),
        (["style-head", "--out", "{tmp}/nothing"], "nothing"),
        (["eval", "--model", "no-such-model", "-n", "5"], "no-such-model"),
    ],
)
def test_domain_errors_are_one_line(run, tmp_path, args, message):
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["samples", "-n", "0"], "Invalid value for '-n'"),
        (["build", "--precision", "fp8"], "Invalid value for '--precision'"),
        (["finetune", "--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_options_give_one_error_line(run, args, message):
    result = run(*args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def test_eval_measures_a_model_on_a_fresh_gallery(run, tiny_model):
    result = run("eval", "--model", tiny_model, "-n", 30, "--seed", 9)
    assert result.exit_code == 0, result.output
    english, korean = (table.splitlines() for table in result.output.split("\n\n"))
    assert english[0] == "gallery of 30 pictures (seed 9), English queries"
    assert korean[0] == "gallery of 30 pictures (seed 9), Korean queries"
    for lines in (english, korean):
        kinds = [line.split()[0] for line in lines[2:7]]
        assert kinds == ["color+shape", "style", "count", "position", "style+count"]
        for line in lines[2:7]:
            r1, r5 = (float(x) for x in line.split()[2:4])
            assert 0.0 <= r1 <= r5 <= 1.0
    assert not re.search("[가-힣]", english[2]) and re.search("[가-힣]", korean[2])
    only = run("eval", "--model", tiny_model, "-n", 30, "--seed", 9, "--lang", "ko").output
    assert only == "\n".join(korean) + "\n"


def test_the_shipped_models_rebuild_commands_still_parse():
    """metrics.json tells how to repeat the shipped model; each command it names parses."""
    metrics = json.loads((DEMO_DIR / "metrics.json").read_text())
    commands = [part.split("  (")[0] for part in metrics["rebuild"].split("; then ")]
    assert len(commands) == 3
    stages = ("train", "finetune", "bilingual")
    for command, stage in zip(commands, stages, strict=True):
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "clipsearch.demo"]
        sub = cli.commands[argv[3]]
        ctx = sub.make_context(argv[3], argv[4:])
        assert ctx.params["steps"] == metrics[stage]["steps"]
        if stage == "bilingual":
            assert ctx.params["context_length"] == metrics[stage]["context_length"]
        else:
            assert ctx.params["label_facts"] == ("style", "position")


def test_python_dash_m_runs_the_click_group(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "clipsearch.demo", "samples", "--out", str(tmp_path), "-n", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.jpg"))) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "clipsearch.demo", "samples", "-n", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2
    assert "Usage: python -m clipsearch.demo samples" in bad.stderr
