"""The k-armed bandit testbed (Sutton & Barto, section 2.3) as a gymnasium environment.

A bandit is an MDP with a single state: each step the agent pulls one of ``k`` arms and
receives a reward drawn from that arm's distribution, here ``N(q*(a), 1)``. The true arm
values ``q*(a)`` are drawn from ``N(0, 1)`` at every reset. With ``drift > 0`` the problem
is non-stationary: after every pull each ``q*(a)`` takes an independent ``N(0, drift^2)``
random-walk step (exercise 2.5 of Sutton & Barto), which is where constant step sizes beat
sample averages.

The sampling lives in two small functions, :func:`sample_arm_values` and
:func:`pull_arms`, that work on a batch of independent testbeds at once; the environment
uses them for one testbed, and :func:`rl4lmt.mdp.run_bandit` for thousands of runs at once.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["BanditEnv", "sample_arm_values", "pull_arms"]


def sample_arm_values(rng: np.random.Generator, k: int, n_runs: int | None = None) -> np.ndarray:
    """True arm values ``q*(a) ~ N(0, 1)``: shape ``(k,)``, or ``(n_runs, k)`` for a batch."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return rng.normal(0.0, 1.0, size=(int(k),) if n_runs is None else (int(n_runs), int(k)))


def pull_arms(rng: np.random.Generator, q_star: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Rewards ``R ~ N(q*(A), 1)`` for one pull per testbed.

    ``q_star`` has shape ``(..., k)`` and ``actions`` the leading shape ``(...)``."""
    q_star = np.asarray(q_star, dtype=float)
    actions = np.asarray(actions)
    if actions.shape != q_star.shape[:-1]:
        raise ValueError(f"actions must have shape {q_star.shape[:-1]}, got {actions.shape}")
    means = np.take_along_axis(q_star, actions[..., None].astype(np.int64), axis=-1)[..., 0]
    return means + rng.normal(0.0, 1.0, size=means.shape)


class BanditEnv(gym.Env):
    """One k-armed testbed. Observation: always 0 (one state). Action: the arm to pull.

    Args:
        k: number of arms.
        drift: standard deviation of the per-step random walk of ``q*`` (0 = stationary).
        steps: episode length; the episode is *truncated* (not terminated) after it, since a
            bandit has no natural end.

    After ``reset`` the true values are ``env.unwrapped.q_star`` and the best arm is
    ``env.unwrapped.optimal_action`` (for evaluation only; an agent must not peek).
    """

    metadata = {"render_modes": []}

    def __init__(self, k: int = 10, drift: float = 0.0, steps: int = 1000) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if drift < 0:
            raise ValueError(f"drift must be >= 0, got {drift}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        self.k, self.drift, self.steps = int(k), float(drift), int(steps)
        self.observation_space = spaces.Discrete(1)
        self.action_space = spaces.Discrete(self.k)
        self.q_star = np.zeros(self.k)
        self._t = 0

    @property
    def optimal_action(self) -> int:
        """The arm with the highest true value right now."""
        return int(np.argmax(self.q_star))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.q_star = sample_arm_values(self.np_random, self.k)
        self._t = 0
        return 0, {"q_star": self.q_star.copy()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.k}), got {action!r}")
        optimal = self.optimal_action
        reward = float(pull_arms(self.np_random, self.q_star, np.asarray(action)))
        if self.drift > 0:
            self.q_star = self.q_star + self.np_random.normal(0.0, self.drift, size=self.k)
        self._t += 1
        info = {"optimal": int(action) == optimal}
        return 0, reward, False, self._t >= self.steps, info
