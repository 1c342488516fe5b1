"""Seeding and device helpers."""
import random

import numpy as np
import pytest
import torch

import rl4lmt


def _draw():
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_set_seed_makes_python_numpy_and_torch_repeatable():
    rl4lmt.set_seed(7)
    a = _draw()
    rl4lmt.set_seed(7)
    assert _draw() == a
    rl4lmt.set_seed(8)
    assert _draw() != a


def test_set_seed_rejects_bad_input():
    with pytest.raises(TypeError, match="seed"):
        rl4lmt.set_seed(1.5)
    with pytest.raises(ValueError, match="seed"):
        rl4lmt.set_seed(-1)


def test_get_device_prefers_cuda_only_when_present():
    dev = rl4lmt.get_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert rl4lmt.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="prefer"):
            rl4lmt.get_device("cuda")


def test_to_device_moves_nested_containers():
    batch = {"ids": torch.zeros(2), "rest": [torch.ones(1), 3]}
    moved = rl4lmt.to_device(batch, "cpu")
    assert moved["ids"].device.type == "cpu" and moved["rest"][1] == 3
