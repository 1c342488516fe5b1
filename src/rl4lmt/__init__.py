"""rl4lmt: the helper package of the course "Reinforcement Learning for Language Model Training".

Modules, one per idea (each chapter teaches one):

- ``rl4lmt.world``  the TinyReviews lab world whose truth is known exactly
- ``rl4lmt.zoo``    shipped tiny models: ``load("tiny-reviews") -> (model, tokenizer)``
- ``rl4lmt.lm``     log-probabilities, surprisal, attention from scratch
- ``rl4lmt.decoding``, ``rl4lmt.envs``, ``rl4lmt.mdp``, ``rl4lmt.pg``, ... (later chapters)
- ``rl4lmt.grading`` the hardened nbgrader pipeline
"""
from rl4lmt.utils import get_device, set_seed, to_device

__version__ = "0.1.0"
__all__ = ["set_seed", "get_device", "to_device", "__version__"]
