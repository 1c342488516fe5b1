"""Gymnasium environments of the course, registered under the ids the book uses.

=========================  =========================================================
id                         environment
=========================  =========================================================
``rl4lmt/GridWorld-v0``    the lecture's 4x3 gridworld (:class:`GridWorldEnv`), at most
                           100 steps per episode; exposes ``transition_model()``
``rl4lmt/Bandit-v0``       the 10-armed testbed (:class:`BanditEnv`), 1000 pulls
``rl4lmt/TextGen-v0``      writing a TinyReviews review token by token
                           (:class:`TextGenEnv`): state = prefix, action = next token
=========================  =========================================================

Importing this package registers the ids, so ``gymnasium.make("rl4lmt/GridWorld-v0",
slip=0.2)`` works after ``import rl4lmt.envs``. Keyword arguments of ``make`` go to the
environment's constructor.
"""
from __future__ import annotations

import gymnasium as gym

from rl4lmt.envs.bandit import BanditEnv, pull_arms, sample_arm_values
from rl4lmt.envs.gridworld import ACTIONS, ARROWS, LECTURE_LAYOUT, GridWorldEnv, plot_values
from rl4lmt.envs.textgen import TextGenEnv

__all__ = [
    "GridWorldEnv", "BanditEnv", "TextGenEnv", "ACTIONS", "ARROWS", "LECTURE_LAYOUT",
    "sample_arm_values", "pull_arms", "plot_values", "ENV_IDS",
]

ENV_IDS = ("rl4lmt/GridWorld-v0", "rl4lmt/Bandit-v0", "rl4lmt/TextGen-v0")


def _register() -> None:
    specs = {
        "rl4lmt/GridWorld-v0": dict(entry_point="rl4lmt.envs.gridworld:GridWorldEnv", max_episode_steps=100),
        "rl4lmt/Bandit-v0": dict(entry_point="rl4lmt.envs.bandit:BanditEnv"),
        "rl4lmt/TextGen-v0": dict(entry_point="rl4lmt.envs.textgen:TextGenEnv"),
    }
    for env_id, kwargs in specs.items():
        if env_id not in gym.registry:  # re-imports (autoreload) must not warn
            gym.register(id=env_id, **kwargs)


_register()
