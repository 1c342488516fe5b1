"""Helpers the whole course uses: seeding, device choice, input checks.

torch is imported inside the functions that need it, so that torch-free modules (the world) can
use the checks without paying for torch at import time.
"""
from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

__all__ = ["set_seed", "get_device", "to_device", "check_texts"]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    The same seed gives the same numbers on the CPU; GPU kernels may still differ in the
    last bits, which the course states as a tolerance where it matters.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    import torch

    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present (Colab GPU), the CPU otherwise.

    ``prefer`` forces a choice ("cpu" or "cuda"); asking for CUDA on a machine without it
    raises a ValueError rather than failing later inside a kernel. Setting the environment
    variable ``CUDA_VISIBLE_DEVICES=""`` makes the CPU the default everywhere.
    """
    import torch

    if prefer is not None:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a str or None, got {type(prefer).__name__}")
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"prefer={prefer!r} but CUDA is not available on this machine")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(obj, device: torch.device | str | None = None):
    """Move a tensor, a module, or a dict/list/tuple of them to ``device`` (default: get_device())."""
    import torch

    device = get_device() if device is None else torch.device(device)
    if isinstance(obj, (torch.Tensor, torch.nn.Module)):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def check_texts(texts) -> list[str]:
    """``texts`` as a non-empty list of strings; a TypeError/ValueError naming ``texts`` otherwise."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("texts must not be empty")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must hold strings, got {type(bad[0]).__name__}")
    return texts
