"""The lecture's 4x3 gridworld as a gymnasium environment that also hands out its model.

The grid (lecture coordinates ``(x, y)``, ``x`` = column from the left, ``y`` = row from
the bottom, both starting at 1)::

    y=3   .  .  .  +1        S = start (1, 1)
    y=2   .  #  . -1         # = wall (2, 2)
    y=1   S  .  .  .
         x=1 2  3  4

Conventions (they reproduce the lecture's worked numbers exactly):

* **Reward of a state, paid when the agent leaves it.** Every step taken *from* an ordinary
  square earns ``step_reward`` (default 0). A terminal square (+1 or -1) pays its reward on
  the one step taken *from* it, and that step ends the episode (any action "exits").
  Hence ``V(4,3) = +1``, ``V(4,2) = -1`` and, with gamma = 0.9 and deterministic moves,
  ``V*(3,3) = 0.9``, ``V*(2,3) = 0.81``, ``V*(1,1) = 0.9**5``: a reward earned k steps
  from now is discounted by gamma**k. This is the state-reward form of the Bellman
  equation, ``V(s) = R(s) + gamma * max_a sum_s' P(s'|s,a) V(s')`` (Russell & Norvig).
* **Slippery moves.** The intended move happens with probability ``1 - slip``; with
  probability ``slip / 2`` each the agent moves at a right angle instead. A move into the
  wall or off the grid leaves the agent where it is. ``slip = 0.2`` is the textbook setting.
* **The model for planning.** ``env.unwrapped.transition_model()`` returns ``(P, R)`` with
  ``P[s, a, s']`` the transition probabilities and ``R[s, a]`` the expected reward. Rows of
  terminal states are all zero (the episode ends: no next state), so ``P`` is
  sub-stochastic and ``V = R_pi + gamma * P_pi V`` holds for any gamma in [0, 1] as long
  as the policy reaches a terminal square.
"""
from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["GridWorldEnv", "ACTIONS", "ARROWS", "LECTURE_LAYOUT", "plot_values"]

#: Action ids in order; clockwise from "up".
ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
#: One arrow per action, for printing and plotting greedy policies.
ARROWS: tuple[str, ...] = ("↑", "→", "↓", "←")
# (dx, dy) of each action in lecture coordinates (y grows upwards).
_MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0))

#: The lecture's 4x3 grid, top row first: '.' square, '#' wall, 'S' start, '+'/'-' terminals.
LECTURE_LAYOUT: tuple[str, ...] = (
    "...+",
    ".#.-",
    "S...",
)


class GridWorldEnv(gym.Env):
    """A gridworld MDP: observation = square index, action in {up, right, down, left}.

    Args:
        layout: rows of the grid, top row first. Characters: ``.`` square, ``#`` wall,
            ``S`` start square (exactly one), ``+`` terminal paying ``terminal_rewards[0]``,
            ``-`` terminal paying ``terminal_rewards[1]``.
        slip: probability in [0, 1] of moving at a right angle to the intended direction
            (half to each side). 0 = deterministic (the lecture's worked numbers).
        step_reward: reward for each step taken from a non-terminal square (e.g. -0.04).
        gamma: the task's discount factor in [0, 1], stored for planners
            (``env.unwrapped.gamma``); the environment itself never discounts.
        terminal_rewards: rewards of the ``+`` and ``-`` squares.
        render_mode: ``None`` or ``"ansi"`` (a text picture of the grid).

    States are numbered over the non-wall squares, row by row from the top-left; ``cells[s]``
    gives the lecture coordinates ``(x, y)`` of state ``s`` and ``state_of((x, y))`` the
    inverse.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        layout: Sequence[str] = LECTURE_LAYOUT,
        slip: float = 0.0,
        step_reward: float = 0.0,
        gamma: float = 0.9,
        terminal_rewards: tuple[float, float] = (1.0, -1.0),
        render_mode: str | None = None,
    ) -> None:
        if isinstance(layout, str) or not all(isinstance(row, str) for row in layout):
            raise TypeError("layout must be a sequence of strings (rows, top row first)")
        if len(layout) == 0 or len({len(row) for row in layout}) != 1 or len(layout[0]) == 0:
            raise ValueError("layout must be a non-empty list of equally long, non-empty rows")
        if set("".join(layout)) - set(".#S+-"):
            raise ValueError(f"layout may only use the characters '.#S+-', got {layout!r}")
        if "".join(layout).count("S") != 1:
            raise ValueError("layout must contain exactly one start square 'S'")
        if not 0.0 <= float(slip) <= 1.0:
            raise ValueError(f"slip must be in [0, 1], got {slip}")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if len(terminal_rewards) != 2:
            raise ValueError(f"terminal_rewards must be a pair (+, -), got {terminal_rewards!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")

        self.layout = tuple(layout)
        self.slip = float(slip)
        self.step_reward = float(step_reward)
        self.gamma = float(gamma)
        self.terminal_rewards = (float(terminal_rewards[0]), float(terminal_rewards[1]))
        self.render_mode = render_mode
        self.height, self.width = len(layout), len(layout[0])

        # Lecture coordinates of every non-wall square, row by row from the top-left.
        self.cells: list[tuple[int, int]] = []
        kinds: list[str] = []
        for r, row in enumerate(self.layout):
            for c, ch in enumerate(row):
                if ch != "#":
                    self.cells.append((c + 1, self.height - r))
                    kinds.append(ch)
        self._index = {cell: s for s, cell in enumerate(self.cells)}
        self.start_state = kinds.index("S")
        self.terminal = np.array([k in "+-" for k in kinds])
        # The reward of a state (paid on leaving it): step reward, or the terminal's reward.
        self.state_reward = np.array(
            [self.terminal_rewards[0] if k == "+" else self.terminal_rewards[1] if k == "-"
             else self.step_reward for k in kinds]
        )
        self.n_states, self.n_actions = len(self.cells), len(ACTIONS)
        self.observation_space = spaces.Discrete(self.n_states)
        self.action_space = spaces.Discrete(self.n_actions)
        self._P, self._R = self._build_model()
        self.state = self.start_state

    # ----- the model -------------------------------------------------------------------
    def state_of(self, cell: tuple[int, int]) -> int:
        """The state index of the square at lecture coordinates ``(x, y)``."""
        if tuple(cell) not in self._index:
            raise ValueError(f"cell {cell!r} is not a square of this grid (walls have no state)")
        return self._index[tuple(cell)]

    def _move(self, s: int, a: int) -> int:
        x, y = self.cells[s]
        dx, dy = _MOVES[a]
        # Bumping into a wall or the edge leaves the agent where it is.
        return self._index.get((x + dx, y + dy), s)

    def _build_model(self) -> tuple[np.ndarray, np.ndarray]:
        S, A = self.n_states, self.n_actions
        P = np.zeros((S, A, S))
        R = np.zeros((S, A))
        for s in range(S):
            R[s, :] = self.state_reward[s]
            if self.terminal[s]:
                continue  # leaving a terminal square ends the episode: no next state
            for a in range(A):
                # intended move, and the two right-angle slips (a +- 1 in clockwise order)
                for b, p in ((a, 1.0 - self.slip), ((a + 1) % A, self.slip / 2), ((a - 1) % A, self.slip / 2)):
                    if p > 0:
                        P[s, a, self._move(s, b)] += p
        return P, R

    def transition_model(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P, R)``: ``P[s, a, s']`` = Pr(next square s' | s, a) (zero rows at terminals,
        where the episode ends) and ``R[s, a]`` = expected reward of taking a in s. Copies."""
        return self._P.copy(), self._R.copy()

    # ----- the gymnasium API --------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.start_state
        return self.state, {"cell": self.cells[self.state]}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.n_actions}), got {action!r}")
        s = self.state
        reward = float(self._R[s, action])
        if self.terminal[s]:
            # exiting a terminal square: its reward is paid and the episode ends here
            return s, reward, True, False, {"cell": self.cells[s]}
        self.state = int(self.np_random.choice(self.n_states, p=self._P[s, action]))
        return self.state, reward, False, False, {"cell": self.cells[self.state]}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        rows = []
        for r, row in enumerate(self.layout):
            chars = []
            for c, ch in enumerate(row):
                here = self._index.get((c + 1, self.height - r)) == self.state
                chars.append("A" if here else ch)
            rows.append(" ".join(chars))
        return "\n".join(rows) + "\n"


def plot_values(env: GridWorldEnv, V: np.ndarray, policy: np.ndarray | None = None, ax=None,
                title: str | None = None, vmax: float | None = None):
    """Heat-map of state values ``V`` on the grid, with the greedy ``policy`` as arrows.

    Walls are grey, terminal squares are outlined; returns the matplotlib ``Axes``."""
    import matplotlib.pyplot as plt  # lazy: environments must not need matplotlib

    env = getattr(env, "unwrapped", env)
    V = np.asarray(V, dtype=float)
    if V.shape != (env.n_states,):
        raise ValueError(f"V must have shape ({env.n_states},), got {V.shape}")
    if policy is not None and np.shape(policy) != (env.n_states,):
        raise ValueError(f"policy must have shape ({env.n_states},), got {np.shape(policy)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * env.width + 1, 1.1 * env.height))
    grid = np.full((env.height, env.width), np.nan)
    for s, (x, y) in enumerate(env.cells):
        grid[env.height - y, x - 1] = V[s]
    vmax = float(np.nanmax(np.abs(grid))) if vmax is None else vmax
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("0.45")  # walls
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax)
    for s, (x, y) in enumerate(env.cells):
        r, c = env.height - y, x - 1
        label = f"{V[s]:.2f}"
        if policy is not None and not env.terminal[s]:
            label = f"{ARROWS[int(policy[s])]}\n{label}"
        ax.text(c, r, label, ha="center", va="center", fontsize=10)
        if env.terminal[s]:
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xticks(range(env.width), [str(x) for x in range(1, env.width + 1)])
    ax.set_yticks(range(env.height), [str(y) for y in range(env.height, 0, -1)])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    return ax
