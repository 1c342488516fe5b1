"""Helpers the whole course uses: seeding, device choice, input checks.

torch is imported inside the functions that need it, so that torch-free modules (the world) can
use the checks without paying for torch at import time.
"""
from __future__ import annotations

import heapq
import math
import os
import random
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

__all__ = ["set_seed", "get_device", "to_device", "model_device", "check_generator", "check_texts",
           "best_first_search"]


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
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple (e.g. pg.Rollout)
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def model_device(model) -> torch.device:
    """The device a model computes on (that of its first parameter; the CPU for a parameter-free one).

    The course's device convention: functions that take a model move their inputs there.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-free module
        return torch.device("cpu")


def check_generator(generator, device) -> None:
    """A ``torch.Generator`` (or ``None``) that can draw on ``device``; a clear error otherwise.

    torch draws on a device only with a generator of the same device type; the error torch raises
    itself, deep inside a sampling loop, does not say which argument is wrong.
    """
    import torch

    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = torch.device(device)
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device.type} but the model is on {device}: create it with "
                         f"torch.Generator(device={device.type!r}).manual_seed(seed)")


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


def best_first_search(
    expand: Callable[[Any], Iterable[tuple[Hashable, float, Any]]],
    start: Any,
    n: int,
    *,
    max_length: int | None = None,
    max_expansions: int | None = None,
) -> list[tuple[tuple, float]]:
    """The ``n`` most probable complete sequences of a sequential distribution, by best-first search.

    The probability of a prefix can only shrink as it grows (every factor
    :math:`P(w_{i+1} \\mid w_{1:i}) \\le 1`), so always expanding the most probable open prefix
    (uniform-cost search, Dijkstra's algorithm on :math:`-\\log P`) pops complete sequences in order
    of decreasing probability: the first ``n`` popped are exactly the ``n`` most probable. The one
    search behind ``TinyReviews.most_probable`` and ``rl4lmt.decoding.exact_top_sequences``.

    Args:
        expand: ``state -> [(token, probability, next_state), ...]``; ``next_state`` ``None`` means
            the token ends the sequence (it is not included in the returned tokens).
        start: the state of the empty prefix (not ``None``).
        n: how many sequences to return.
        max_length: prefixes of this many tokens are not expanded (``None``: no limit).
        max_expansions: a ValueError after expanding this many prefixes (``None``: no limit).

    Returns:
        ``[(tokens, log_probability), ...]``, most probable first (ties: first pushed first); the
        log-probability includes the end event.
    """
    heap: list = [(0.0, 0, (), start)]  # (-log p, tie-break, tokens, state; None once complete)
    counter, expansions, found = 1, 0, []
    while heap and len(found) < n:
        neg_logp, _, tokens, state = heapq.heappop(heap)
        if state is None:
            found.append((tokens, -neg_logp))  # popped in order: the next most probable
            continue
        if max_length is not None and len(tokens) >= max_length:
            continue
        expansions += 1
        if max_expansions is not None and expansions > max_expansions:
            raise ValueError(f"max_expansions ({max_expansions}) reached before finding n={n} sequences")
        for token, prob, nxt in expand(state):
            if prob <= 0:
                continue
            grown = tokens if nxt is None else tokens + (token,)
            heapq.heappush(heap, (neg_logp - math.log(prob), counter, grown, nxt))
            counter += 1
    return found
