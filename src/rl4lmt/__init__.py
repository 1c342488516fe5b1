"""rl4lmt: the helper package of the course "Reinforcement Learning for Language Model Training".

Modules, one per idea (each chapter teaches one):

- ``rl4lmt.world``  the TinyReviews lab world whose truth is known exactly
- ``rl4lmt.zoo``    shipped tiny models: ``load("tiny-reviews") -> (model, tokenizer)``
- ``rl4lmt.lm``     log-probabilities, surprisal, attention and the transformer block from scratch
- ``rl4lmt.decoding`` greedy, sampling, filters, beam search (chapter 2; the package's one sampler)
- ``rl4lmt.envs``, ``rl4lmt.mdp`` gymnasium environments, planning, bandits (chapter 3)
- ``rl4lmt.pg``     returns, REINFORCE, baselines, PPO's clipped loss, the LM as a policy (chapter 4)
- ``rl4lmt.sft``, ``rl4lmt.reward``, ``rl4lmt.ppo``, ``rl4lmt.calibration``, ``rl4lmt.probing``
  (chapters 5 to 8)
- ``rl4lmt.utils``  seeds, devices, input checks, the best-first search (the ground floor)
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
