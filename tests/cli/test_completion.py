"""Shell completion through click's own mechanism: `_CLIPSEARCH_COMPLETE=bash_source clipsearch`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def complete(shell: str, words: str) -> list[str]:
    """What click answers a shell that asks for the completions of the last word of ``words``."""
    parts = words.split(" ")
    env = {"_CLIPSEARCH_COMPLETE": f"{shell}_complete", "COMP_WORDS": words}
    env["COMP_CWORD"] = parts[-1] if shell == "fish" else str(len(parts) - 1)
    result = CliRunner().invoke(main, [], prog_name="clipsearch", env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    if shell == "zsh":  # type, value, help: three lines each
        return lines[1::3]
    return [line.split("\t")[0].split(",", 1)[1] for line in lines]  # type,value[<TAB>help]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_commands_and_options_complete(shell):
    assert {"search", "serve"} <= set(complete(shell, "clipsearch se"))
    assert "similar" not in complete(shell, "clipsearch se")
    options = complete(shell, "clipsearch search x --")
    assert {"--paths", "--null", "--link-to", "--json", "--model"} - set(options) == {"--model"}
    assert "--pretrained" not in options
    assert {"--model", "--pretrained", "--device"} <= set(complete(shell, "clipsearch index . --"))
    assert complete(shell, "clipsearch search x --device c") == ["cpu", "cuda"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_model_names_complete(shell):
    assert complete(shell, "clipsearch index . --model de") == ["demo"]
    vit = complete(shell, "clipsearch index . --model ViT-B-1")
    assert "ViT-B-16" in vit and all(n.startswith("ViT-B-1") for n in vit)
    assert "clipsearch-demo" in complete(shell, "clipsearch embed --model clip")
    assert {"hf-hub:", "local-dir:"} <= set(complete(shell, "clipsearch index . --model "))


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_source_script_calls_back_with_the_right_variable(shell):
    env = {"_CLIPSEARCH_COMPLETE": f"{shell}_source"}
    result = CliRunner().invoke(main, [], prog_name="clipsearch", env=env)
    assert result.exit_code == 0
    assert f"_CLIPSEARCH_COMPLETE={shell}_complete" in result.stdout.replace('"', "")


def test_the_installed_command_completes():
    """The console script itself, as a shell would run it (`run()`, not only the click group)."""
    script = shutil.which("clipsearch", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("no clipsearch console script beside this Python")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout, even when another one is installed
        "_CLIPSEARCH_COMPLETE": "bash_complete",
        "COMP_WORDS": "clipsearch search x -",
        "COMP_CWORD": "3",
    }
    out = subprocess.run([script], env=env, capture_output=True, text=True, check=True).stdout
    assert {"plain,-0", "plain,--paths", "plain,--link-to"} <= set(out.splitlines())
