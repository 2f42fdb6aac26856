"""Checkpoints and the exported model: written whole, pruned, resumed, loadable."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipsearch.errors import TrainingError
from clipsearch.models.identity import CONFIG_NAME, WEIGHTS_NAME
from clipsearch.models.loading import load_encoder
from clipsearch.store.fileio import atomic_write
from clipsearch.training import checkpoints as checkpoints_mod
from clipsearch.training.checkpoints import (
    Checkpointer,
    checkpoint_to_resume,
    export_model,
    latest_checkpoint,
    read_checkpoint,
)
from clipsearch.training.contrastive import train_clip
from clipsearch.training.data import PairDataset
from tests.helpers import WriteCrash, crashing_writer
from tests.training.helpers import TINY, TINY_CFG, pairs, train_config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpointer_keeps_the_newest_and_knows_the_last(tmp_path: Path):
    config = train_config(tmp_path, checkpoint_every=3, keep_checkpoints=2)
    saver = Checkpointer(config)
    assert [s for s in range(1, 10) if saver.due(s)] == [3, 6, 9]
    assert not Checkpointer(train_config(tmp_path)).due(3)  # checkpoint_every 0: at the end
    for step in (3, 6, 9):
        saver.save(step, {"step": step, "config": config.to_dict()})
    names = sorted(p.name for p in config.checkpoints.iterdir())
    assert names == ["step_0000006.pt", "step_0000009.pt"]
    assert saver.has(9) and not saver.has(6)
    assert latest_checkpoint(config) == saver.last == config.checkpoints / "step_0000009.pt"
    assert read_checkpoint(saver.last)["step"] == 9
    assert _mode(saver.last) == 0o644


def test_resume_refuses_unreadable_and_foreign_checkpoints(tmp_path: Path):
    config = train_config(tmp_path)
    with pytest.raises(TrainingError, match="nothing to resume"):
        checkpoint_to_resume(config)
    saver = Checkpointer(config)
    saver.save(2, {"step": 2, "config": config.to_dict()})
    assert checkpoint_to_resume(config)[0] == saver.last
    with pytest.raises(TrainingError, match=r"belongs to another run \(batch_size, seed differ"):
        checkpoint_to_resume(train_config(tmp_path, batch_size=4, seed=1))

    saver.last.write_bytes(saver.last.read_bytes()[:50])
    with pytest.raises(TrainingError, match="cannot be read.*delete it"):
        checkpoint_to_resume(config)


def test_a_crash_while_checkpointing_leaves_the_older_one_to_resume(tmp_path, monkeypatch):
    data = PairDataset(tuple(pairs(48, seed=4)), "memory")
    settings = {"steps": 8, "checkpoint_every": 4, "keep_checkpoints": 3}
    full = train_clip(train_config(tmp_path / "full", **settings), data, progress=False)

    monkeypatch.setattr(checkpoints_mod, "atomic_write", crashing_writer(atomic_write, 1))
    with pytest.raises(WriteCrash):
        train_clip(train_config(tmp_path, **settings), data, progress=False)
    monkeypatch.undo()
    folder = tmp_path / "model" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step_0000004.pt"]

    resumed = train_clip(train_config(tmp_path, resume=True, **settings), data, progress=False)
    assert resumed.start_step == 4 and resumed.steps == 8
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("save_dtype", ["fp32", "fp16"])
def test_export_is_a_local_dir_model_that_loads(tmp_path: Path, save_dtype: str):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    out = export_model(model, TINY_CFG, tmp_path / "out", save_dtype=save_dtype)

    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"] == TINY_CFG
    assert config["preprocess_cfg"]["size"] == [32, 32]
    assert _mode(out / WEIGHTS_NAME) == _mode(out / CONFIG_NAME) == 0o644
    assert not list(out.glob("*.tmp"))

    encoder = load_encoder(f"local-dir:{out}", device="cpu", precision="fp32")
    tokens = encoder.tokenizer(["a red circle"])
    with torch.no_grad():
        expected = model.encode_text(tokens, normalize=True).numpy()
    tolerance = 1e-5 if save_dtype == "fp32" else 1e-2
    np.testing.assert_allclose(encoder.encode_texts(["a red circle"]), expected, atol=tolerance)
