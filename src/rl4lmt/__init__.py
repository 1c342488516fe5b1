"""rl4lmt: the helper package of the course "Reinforcement Learning for Language Model Training".

Modules, one per idea (each chapter teaches one):

- ``rl4lmt.world``  the TinyReviews lab world whose truth is known exactly
- ``rl4lmt.zoo``    shipped tiny models: ``load("tiny-reviews") -> (model, tokenizer)``
- ``rl4lmt.lm``     log-probabilities, surprisal, attention from scratch
- ``rl4lmt.decoding``, ``rl4lmt.envs``, ``rl4lmt.mdp``, ``rl4lmt.pg``, ... (later chapters)
- ``rl4lmt.grading`` the hardened nbgrader pipeline
"""
from importlib import import_module

__version__ = "0.1.0"
__all__ = ["set_seed", "get_device", "to_device", "__version__"]
_UTILS = ("set_seed", "get_device", "to_device")


def __getattr__(name: str):
    # Lazy (PEP 562): `import rl4lmt.<module>` does not import torch unless it needs it, e.g. the
    # nbgrader process that loads rl4lmt.grading once for every graded submission.
    if name in _UTILS:
        return getattr(import_module("rl4lmt.utils"), name)
    raise AttributeError(f"module 'rl4lmt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_UTILS))
