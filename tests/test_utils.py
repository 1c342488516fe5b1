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
    # "meta" is a device every machine has, and not the one the tensors start on: a no-op fails
    from rl4lmt.pg import Rollout

    roll = Rollout(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 2), ["a", "b"], torch.ones(2, dtype=torch.bool))
    batch = {"ids": torch.zeros(2), "rest": [torch.ones(1), 3, (torch.ones(2),)], "roll": roll,
             "net": torch.nn.Linear(2, 2)}
    moved = rl4lmt.to_device(batch, "meta")
    assert moved["ids"].is_meta and moved["rest"][0].is_meta and moved["rest"][2][0].is_meta
    assert moved["rest"][1] == 3 and isinstance(moved["rest"][2], tuple)
    assert isinstance(moved["roll"], Rollout) and moved["roll"].input_ids.is_meta and moved["roll"].texts == ["a", "b"]
    assert moved["net"].weight.is_meta
    assert not batch["ids"].is_meta  # tensors are moved, not changed in place


def test_model_device_and_generator_checks():
    from rl4lmt.utils import check_generator, model_device

    assert model_device(torch.nn.Linear(2, 2)).type == "cpu"
    assert model_device(torch.nn.Linear(2, 2).to("meta")).type == "meta"
    assert model_device(torch.nn.ReLU()).type == "cpu"  # no parameters: the CPU
    with pytest.raises(TypeError, match="model"):
        model_device("gpt2")
    check_generator(None, "cpu")
    check_generator(torch.Generator(), "cpu")
    with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda"):
        check_generator(torch.Generator(), "cuda")
    with pytest.raises(TypeError, match="generator"):
        check_generator(0, "cpu")


def test_one_model_device_helper():
    """lm and pg use utils.model_device; no module keeps a copy of its own."""
    import inspect

    from rl4lmt import decoding, lm, pg, utils

    assert lm._model_device is utils.model_device and pg.model_device is utils.model_device
    for module in (decoding, lm, pg):
        assert "next(model.parameters()).device" not in inspect.getsource(module), module.__name__


def test_glue_stores_plain_python_numbers(monkeypatch):
    """numpy 2's repr ('np.float64(0.5)') breaks myst-nb's {glue:text}`x:.2f`; utils.glue stores plain numbers."""
    import myst_nb
    import numpy as np
    import torch

    from rl4lmt.book import glue

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update({name: value}))
    glue("a", np.float64(0.5))
    glue("b", np.int64(3))
    glue("c", torch.tensor(0.25))
    glue("d", "text")
    assert seen == {"a": 0.5, "b": 3, "c": 0.25, "d": "text"}
    assert type(seen["a"]) is float and type(seen["b"]) is int and type(seen["c"]) is float
    assert format(seen["a"], ".2f") == "0.50"  # what {glue:text}`a:.2f` does
    with pytest.raises(TypeError, match="name"):
        glue("", 1.0)
