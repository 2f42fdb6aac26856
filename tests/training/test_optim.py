"""The learning-rate schedule and the weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

from clipsearch.training.optim import lr_factor, param_groups
from tests.training.helpers import train_config


def test_warmup_then_cosine_to_the_floor(tmp_path):
    config = train_config(tmp_path, steps=110, warmup_steps=10, final_lr_fraction=0.1)
    assert [lr_factor(config, s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(config, 10) == pytest.approx(1.0)
    assert lr_factor(config, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(config, 110) == pytest.approx(0.1)


def test_a_time_limit_decays_with_whichever_is_further_along(tmp_path):
    config = train_config(tmp_path, steps=110, warmup_steps=10, time_limit_minutes=1)
    assert lr_factor(config, 20, elapsed=30.0) == pytest.approx(0.5)  # half the time
    assert lr_factor(config, 60, elapsed=1.0) == pytest.approx(0.5)  # half the steps
    assert lr_factor(config, 20, elapsed=90.0) == pytest.approx(0.0)
    assert lr_factor(train_config(tmp_path, steps=110, warmup_steps=10), 20, 90.0) > 0.9


def test_no_decay_for_gains_biases_and_the_temperature():
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(4, 4)
    model.ln_final = torch.nn.LayerNorm(4)
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10)))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 4  # bias, LayerNorm weight and bias, logit_scale
