"""Training settings are checked when made, with messages that say what to change."""

from __future__ import annotations

import pytest

from clipsearch.errors import TrainingError
from clipsearch.training.config import TrainConfig


def test_invalid_settings():
    with pytest.raises(TrainingError, match="batch_size must be at least 2"):
        TrainConfig(output_dir="x", batch_size=1)
    with pytest.raises(TrainingError, match="precision must be one of"):
        TrainConfig(output_dir="x", precision="fp8")
    with pytest.raises(TrainingError, match="auxiliary label loss needs labels"):
        TrainConfig(output_dir="x", label_weight=1.0)
    with pytest.raises(TrainingError, match="needs at least two distinct classes"):
        TrainConfig(output_dir="x", label_weight=1.0, labels={"style": ("a", "a")})
    with pytest.raises(TrainingError, match="label_weight must be >= 0"):
        TrainConfig(output_dir="x", label_weight=-1.0)


def test_every_problem_is_named_at_once_and_settings_serialize(tmp_path):
    with pytest.raises(TrainingError, match=r"steps must be.*lr must be positive.*save_dtype"):
        TrainConfig(output_dir="x", steps=0, lr=0, save_dtype="int8")

    config = TrainConfig(output_dir=tmp_path, labels={"style": ("a", "b")}, label_weight=0.5)
    assert config.checkpoints == tmp_path / "checkpoints"
    assert config.label_keys == ["style"]
    as_dict = config.to_dict()
    assert as_dict["output_dir"] == str(tmp_path) and as_dict["checkpoint_dir"] is None
    assert as_dict["betas"] == [0.9, 0.98] and as_dict["labels"] == {"style": ["a", "b"]}
    assert TrainConfig(output_dir="x", labels={"style": ("a", "b")}).label_keys == []
