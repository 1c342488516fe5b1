"""Helpers the whole course uses: seeding and device choice."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["set_seed", "get_device", "to_device"]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    The same seed gives the same numbers on the CPU; GPU kernels may still differ in the
    last bits, which the course states as a tolerance where it matters.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
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
    if prefer is not None:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a str or None, got {type(prefer).__name__}")
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"prefer={prefer!r} but CUDA is not available on this machine")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(obj, device: torch.device | str | None = None):
    """Move a tensor, a module, or a dict/list/tuple of them to ``device`` (default: get_device())."""
    device = get_device() if device is None else torch.device(device)
    if isinstance(obj, (torch.Tensor, torch.nn.Module)):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
