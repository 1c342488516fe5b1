"""Planning in finite MDPs (dynamic programming) and action-value methods for bandits.

Notation (Sutton & Barto, 2018; the lectures): states ``s``, actions ``a``, discount
``gamma``. A finite MDP is given as two arrays

* ``P[s, a, s']`` = Pr(S_{t+1} = s' | S_t = s, A_t = a). A row may sum to *less* than one:
  the missing mass is the probability that the episode ends (terminal states have all-zero
  rows), so terminal values need no special case.
* ``R[s, a]`` = r(s, a) = E[R_{t+1} | S_t = s, A_t = a], the expected reward.

A policy is either deterministic, an int array ``pi[s]`` of shape ``(S,)``, or stochastic,
a matrix ``pi[s, a]`` = pi(a | s) of shape ``(S, A)`` whose rows sum to one.

Planning (the model is known):

* :func:`q_from_v` -- one Bellman backup, Q(s,a) = r(s,a) + gamma sum_s' P(s'|s,a) V(s').
* :func:`policy_evaluation` -- iterate the Bellman expectation equation
  V(s) = sum_a pi(a|s) [ r(s,a) + gamma sum_s' P(s'|s,a) V(s') ] to its fixed point v_pi.
* :func:`value_iteration` -- iterate the Bellman optimality equation
  V(s) = max_a [ r(s,a) + gamma sum_s' P(s'|s,a) V(s') ] to v_*, then act greedily.
* :func:`policy_iteration` -- alternate exact evaluation and greedy improvement.

Bandits (the model is unknown; one state, k arms): :func:`incremental_update`
(NewEstimate = OldEstimate + StepSize [Target - OldEstimate]), :func:`epsilon_greedy`,
:func:`ucb_scores`, the batched :class:`BanditAgent` and :func:`run_bandit`, which runs
thousands of independent testbeds side by side with numpy.

Learning from experience (the model is unknown; (P, R) only serve as a simulator that the
algorithms sample from): :func:`sample_episode`, first-visit Monte Carlo prediction
(:func:`mc_prediction`), TD(0) prediction (:func:`td_prediction`), and tabular Q-learning and
SARSA (:func:`td_control`), checked in the tests against :func:`policy_evaluation` and
:func:`value_iteration`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl4lmt.envs.bandit import pull_arms, sample_arm_values

__all__ = [
    "check_mdp", "policy_matrix", "q_from_v", "greedy_policy", "policy_evaluation",
    "value_iteration", "policy_iteration", "incremental_update", "epsilon_greedy",
    "ucb_scores", "BanditAgent", "BanditResult", "run_bandit",
    "sample_episode", "mc_prediction", "td_prediction", "TDControlResult", "td_control",
]


# ----------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------
def check_mdp(P: np.ndarray, R: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate ``(P, R, gamma)`` and return them as float arrays; errors name the argument."""
    P = np.asarray(P, dtype=float)
    R = np.asarray(R, dtype=float)
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
    if R.shape != P.shape[:2]:
        raise ValueError(f"R must have shape (S, A) = {P.shape[:2]}, got {R.shape}")
    if np.any(P < -1e-12) or np.any(P.sum(-1) > 1 + 1e-9):
        raise ValueError("P must hold probabilities: entries >= 0 and each P[s, a, :] summing to <= 1")
    if not np.all(np.isfinite(R)):
        raise ValueError("R must be finite")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)):
        raise TypeError(f"gamma must be a float, got {type(gamma).__name__}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    return P, R, float(gamma)


def policy_matrix(policy: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """A policy as the matrix ``pi[s, a] = pi(a | s)``: one-hot rows for a deterministic one."""
    policy = np.asarray(policy)
    if policy.shape == (n_states,):
        if not np.issubdtype(policy.dtype, np.integer):
            raise TypeError(f"a deterministic policy must hold ints, got dtype {policy.dtype}")
        if policy.min() < 0 or policy.max() >= n_actions:
            raise ValueError(f"policy actions must be in [0, {n_actions}), got {policy}")
        return np.eye(n_actions)[policy]
    if policy.shape == (n_states, n_actions):
        policy = policy.astype(float)
        if np.any(policy < 0) or not np.allclose(policy.sum(1), 1.0):
            raise ValueError("a stochastic policy's rows policy[s, :] must be probabilities summing to 1")
        return policy
    raise ValueError(f"policy must have shape ({n_states},) or ({n_states}, {n_actions}), got {policy.shape}")


def q_from_v(P: np.ndarray, R: np.ndarray, V: np.ndarray, gamma: float) -> np.ndarray:
    """One Bellman backup: ``Q(s, a) = r(s, a) + gamma * sum_s' P(s' | s, a) V(s')``."""
    P, R, gamma = check_mdp(P, R, gamma)
    V = np.asarray(V, dtype=float)
    if V.shape != (P.shape[0],):
        raise ValueError(f"V must have shape ({P.shape[0]},), got {V.shape}")
    return R + gamma * P @ V  # (S, A, S) @ (S,) -> (S, A)


def greedy_policy(Q: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """``pi(s) = argmax_a Q(s, a)``; ties (within ``tol``) go to the lowest action id."""
    Q = np.asarray(Q, dtype=float)
    if Q.ndim != 2:
        raise ValueError(f"Q must have shape (S, A), got {Q.shape}")
    # comparing with a tolerance keeps round-off from flipping tied actions
    return np.argmax(Q >= Q.max(axis=1, keepdims=True) - tol, axis=1)


def policy_evaluation(
    P: np.ndarray, R: np.ndarray, policy: np.ndarray, gamma: float,
    tol: float = 1e-10, max_iter: int = 100_000, V0: np.ndarray | None = None,
) -> np.ndarray:
    """v_pi by iterating the Bellman expectation equation (Sutton & Barto, eq. 4.5):

    ``V_{k+1}(s) = sum_a pi(a|s) [ r(s,a) + gamma sum_s' P(s'|s,a) V_k(s') ]``

    until ``max_s |V_{k+1}(s) - V_k(s)| < tol``. With ``gamma = 1`` the policy must end every
    episode (reach a terminal state); otherwise the values diverge and a ValueError says so.
    """
    P, R, gamma = check_mdp(P, R, gamma)
    S, A = R.shape
    pi = policy_matrix(policy, S, A)
    R_pi = (pi * R).sum(1)                       # r_pi(s)
    P_pi = np.einsum("sa,sat->st", pi, P)        # P_pi(s, s')
    V = np.zeros(S) if V0 is None else np.asarray(V0, dtype=float).copy()
    for _ in range(int(max_iter)):
        V_new = R_pi + gamma * P_pi @ V          # synchronous sweep: all states from V_k
        if np.max(np.abs(V_new - V)) < tol:
            return V_new
        V = V_new
    raise ValueError(
        f"policy_evaluation did not converge in max_iter={max_iter} sweeps; with gamma={gamma} "
        "the policy must reach a terminal state (or raise max_iter)"
    )


def value_iteration(
    P: np.ndarray, R: np.ndarray, gamma: float, tol: float = 1e-10, max_iter: int = 100_000,
    history: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """v_* and a greedy optimal policy by iterating the Bellman optimality equation
    (Sutton & Barto, eq. 4.10):

    ``V_{k+1}(s) = max_a [ r(s,a) + gamma sum_s' P(s'|s,a) V_k(s') ]``

    from ``V_0 = 0`` until ``max_s |V_{k+1}(s) - V_k(s)| < tol``. Returns ``(V, pi)`` with
    ``pi(s) = argmax_a Q(s, a)``. If ``history`` is a list, every ``V_k`` is appended to it.
    """
    P, R, gamma = check_mdp(P, R, gamma)
    V = np.zeros(P.shape[0])
    if history is not None:
        history.append(V.copy())
    for _ in range(int(max_iter)):
        V_new = q_from_v(P, R, V, gamma).max(axis=1)
        if history is not None:
            history.append(V_new.copy())
        if np.max(np.abs(V_new - V)) < tol:
            return V_new, greedy_policy(q_from_v(P, R, V_new, gamma))
        V = V_new
    raise ValueError(f"value_iteration did not converge in max_iter={max_iter} sweeps (gamma={gamma})")


def policy_iteration(
    P: np.ndarray, R: np.ndarray, gamma: float, policy: np.ndarray | None = None,
    tol: float = 1e-10, max_iter: int = 1_000, history: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Policy iteration (Sutton & Barto, section 4.3): evaluate pi (:func:`policy_evaluation`),
    improve it greedily, ``pi'(s) = argmax_a Q_pi(s, a)``, until the policy is stable.

    ``policy`` is the starting deterministic policy (default: action 0 everywhere; with
    ``gamma = 1`` it must reach a terminal state). An action changes only when another is
    better by more than ``tol``, so ties cannot make the loop cycle. Returns ``(V, pi)``;
    if ``history`` is a list, every ``(V_pi, pi)`` pair is appended to it.
    """
    P, R, gamma = check_mdp(P, R, gamma)
    S, A = R.shape
    pi = np.zeros(S, dtype=np.int64) if policy is None else np.asarray(policy).copy()
    policy_matrix(pi, S, A)  # validate
    for _ in range(int(max_iter)):
        V = policy_evaluation(P, R, pi, gamma, tol=tol * 1e-2)
        if history is not None:
            history.append((V.copy(), pi.copy()))
        Q = q_from_v(P, R, V, gamma)
        best = greedy_policy(Q)
        # keep the current action unless another one is strictly better (no cycling on ties)
        improve = Q[np.arange(S), best] > Q[np.arange(S), pi] + tol
        if not improve.any():
            return V, pi
        pi = np.where(improve, best, pi)
    raise ValueError(f"policy_iteration did not stabilise in max_iter={max_iter} iterations")


# ----------------------------------------------------------------------------------------
# Bandits: action-value methods
# ----------------------------------------------------------------------------------------
def incremental_update(estimate: np.ndarray, target: np.ndarray, step_size: np.ndarray | float) -> np.ndarray:
    """``NewEstimate = OldEstimate + StepSize * (Target - OldEstimate)`` (Sutton & Barto, eq. 2.3).

    With ``step_size = 1/n`` after the n-th reward it is exactly the sample average of the
    rewards; with a constant ``step_size = alpha`` it is the exponential recency-weighted
    average ``(1-alpha)^n Q_1 + sum_i alpha (1-alpha)^(n-i) R_i`` (eq. 2.6)."""
    return estimate + step_size * (target - estimate)


def epsilon_greedy(Q: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """epsilon-greedy actions for a batch of estimates ``Q`` of shape ``(..., k)``.

    With probability ``1 - epsilon`` the greedy arm (ties broken uniformly at random), else an
    arm uniformly at random (possibly the greedy one): the greedy arm is chosen with
    probability ``1 - epsilon + epsilon / k``."""
    Q = np.asarray(Q, dtype=float)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    k = Q.shape[-1]
    # random tie-breaking: a random score on every maximal arm, zero elsewhere, then argmax
    is_max = Q == Q.max(axis=-1, keepdims=True)
    greedy = np.argmax(rng.random(Q.shape) * is_max, axis=-1)
    explore = rng.random(Q.shape[:-1]) < epsilon
    return np.where(explore, rng.integers(k, size=Q.shape[:-1]), greedy)


def ucb_scores(Q: np.ndarray, N: np.ndarray, t: int, c: float) -> np.ndarray:
    """Upper-confidence-bound scores ``Q(a) + c sqrt(ln t / N(a))`` (Sutton & Barto, eq. 2.10;
    Auer et al., 2002); an arm never tried (``N(a) = 0``) scores ``+inf`` so it is tried first."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    Q = np.asarray(Q, dtype=float)
    N = np.asarray(N, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        bonus = c * np.sqrt(np.log(t) / N)
    return np.where(N > 0, Q + bonus, np.inf)


class BanditAgent:
    """Action-value agents for ``n_runs`` independent k-armed bandits at once.

    Args:
        k: number of arms.
        n_runs: independent copies (one row of ``Q`` and ``N`` each).
        epsilon: exploration rate of epsilon-greedy (ignored when ``c`` is given).
        c: if given, act by UCB with this exploration constant instead.
        alpha: constant step size; ``None`` = sample averages (step size 1/N(a)).
        initial: initial estimates Q_1(a); e.g. 5 for "optimistic initial values".

    ``act(rng)`` returns one arm per run, shape ``(n_runs,)``; ``update(actions, rewards)``
    moves the estimates of the pulled arms towards the rewards (:func:`incremental_update`).
    """

    def __init__(self, k: int = 10, n_runs: int = 1, epsilon: float = 0.0, c: float | None = None,
                 alpha: float | None = None, initial: float = 0.0) -> None:
        if int(k) < 1 or int(n_runs) < 1:
            raise ValueError(f"k and n_runs must be >= 1, got k={k}, n_runs={n_runs}")
        if alpha is not None and not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1] or None, got {alpha}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if c is not None and c < 0:
            raise ValueError(f"c must be >= 0 or None, got {c}")
        self.k, self.n_runs = int(k), int(n_runs)
        self.epsilon, self.c, self.alpha, self.initial = float(epsilon), c, alpha, float(initial)
        self.Q = np.full((self.n_runs, self.k), self.initial)
        self.N = np.zeros((self.n_runs, self.k))
        self.t = 0

    def act(self, rng: np.random.Generator) -> np.ndarray:
        if self.c is not None:
            scores = ucb_scores(self.Q, self.N, self.t + 1, self.c)
            return epsilon_greedy(scores, 0.0, rng)  # argmax with random tie-breaking
        return epsilon_greedy(self.Q, self.epsilon, rng)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        actions = np.asarray(actions, dtype=np.int64).reshape(self.n_runs)
        rewards = np.asarray(rewards, dtype=float).reshape(self.n_runs)
        rows = np.arange(self.n_runs)
        self.N[rows, actions] += 1
        step = 1.0 / self.N[rows, actions] if self.alpha is None else self.alpha
        self.Q[rows, actions] = incremental_update(self.Q[rows, actions], rewards, step)
        self.t += 1


@dataclass
class BanditResult:
    """Per-run, per-step records of :func:`run_bandit`, arrays of shape ``(n_runs, steps)``."""

    rewards: np.ndarray
    optimal: np.ndarray  # True where the pulled arm was the best arm at that step

    def mean_reward(self) -> np.ndarray:
        """Average reward at each step, over runs."""
        return self.rewards.mean(axis=0)

    def percent_optimal(self) -> np.ndarray:
        """Percentage of runs that pulled the best arm at each step."""
        return 100.0 * self.optimal.mean(axis=0)


def run_bandit(agent: BanditAgent, steps: int = 1000, *, drift: float = 0.0, seed: int = 0) -> BanditResult:
    """Run ``agent`` on ``agent.n_runs`` fresh k-armed testbeds (the one of
    :class:`rl4lmt.envs.BanditEnv`: q*(a) ~ N(0, 1), R ~ N(q*(A), 1), optional random-walk
    drift of q*) for ``steps`` pulls each. The same seed gives the same testbeds and rewards."""
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift}")
    rng = np.random.default_rng(seed)
    q_star = sample_arm_values(rng, agent.k, agent.n_runs)  # (n_runs, k)
    rewards = np.empty((agent.n_runs, int(steps)))
    optimal = np.empty((agent.n_runs, int(steps)), dtype=bool)
    for t in range(int(steps)):
        a = agent.act(rng)
        r = pull_arms(rng, q_star, a)
        optimal[:, t] = a == q_star.argmax(axis=1)
        rewards[:, t] = r
        agent.update(a, r)
        if drift > 0:  # non-stationary testbed: every q*(a) takes a random-walk step
            q_star = q_star + rng.normal(0.0, drift, size=q_star.shape)
    return BanditResult(rewards=rewards, optimal=optimal)


# ----------------------------------------------------------------------------------------
# Learning from experience: Monte Carlo and temporal-difference methods (model-free)
# ----------------------------------------------------------------------------------------
# These algorithms never read P or R. They only *sample* transitions from them, as an agent
# interacting with an environment would: (P, R) serve as a simulator. That keeps the code short
# and lets the tests compare what is learned with the exact answers of the planning functions.
def _check_episodes(episodes) -> int:
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    return int(episodes)


def _check_step_size(alpha) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1] or None (1/n step sizes), got {alpha!r}")
    return float(alpha)


def _draw(cum: np.ndarray, rng: np.random.Generator) -> int | None:
    """Index drawn from the cumulative probabilities ``cum``; ``None`` for the missing mass."""
    u = rng.random()
    return None if u >= cum[-1] else int(np.searchsorted(cum, u, side="right"))


def _step_size(alpha: float | None, n: float) -> float:
    """A constant ``alpha``, or ``1 / n**0.7`` for the n-th update of an estimate when ``alpha`` is None.

    Any exponent in (0.5, 1] satisfies the Robbins-Monro conditions; 1/n itself makes Q-learning
    converge very slowly when gamma is close to 1 (Even-Dar & Mansour, 2003), so we use 0.7.
    """
    return alpha if alpha is not None else n ** -0.7


def sample_episode(
    P: np.ndarray, R: np.ndarray, policy: np.ndarray, rng: np.random.Generator,
    start: int | None = None, max_steps: int = 1_000,
) -> tuple[list[int], list[int], list[float]]:
    """One episode ``S_0, A_0, R_1, S_1, ..., A_{T-1}, R_T`` of ``policy`` in the MDP ``(P, R)``.

    ``start`` is the first state (``None``: uniformly random, "exploring starts"). The episode
    ends when the sampled next state is "none" (probability ``1 - sum_s' P[s, a, s']``) or after
    ``max_steps`` steps. Rewards are the expected rewards ``R[s, a]`` (the book's gridworld pays
    deterministic rewards). Returns ``(states, actions, rewards)``, all of length ``T``.
    """
    P, R, _ = check_mdp(P, R, 1.0)
    S, A = R.shape
    pi = policy_matrix(policy, S, A)
    s = int(rng.integers(S)) if start is None else int(start)
    states, actions, rewards = [], [], []
    cum_pi, cum_P = np.cumsum(pi, axis=1), np.cumsum(P, axis=2)
    cum_pi[:, -1] = 1.0  # rows of pi sum to one; guard against round-off
    for _ in range(int(max_steps)):
        a = _draw(cum_pi[s], rng)
        states.append(s)
        actions.append(a)
        rewards.append(float(R[s, a]))
        s = _draw(cum_P[s, a], rng)  # None: the missing mass, the episode ends
        if s is None:
            break
    return states, actions, rewards


def mc_prediction(
    P: np.ndarray, R: np.ndarray, policy: np.ndarray, gamma: float, episodes: int,
    *, start: int | None = None, seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """First-visit Monte Carlo prediction of ``v_pi`` (Sutton & Barto, section 5.1).

    For every episode, walk backwards accumulating ``G_t = R_{t+1} + gamma G_{t+1}`` and, at the
    first visit of each state, add ``G_t`` to that state's sample average:
    ``V(s) <- V(s) + (G_t - V(s)) / N(s)``. No bootstrapping: each target is a real return.
    Returns ``(V, N)``, the estimates and the number of returns averaged into each.
    """
    P, R, gamma = check_mdp(P, R, gamma)
    rng = np.random.default_rng(seed)
    V, N = np.zeros(R.shape[0]), np.zeros(R.shape[0])
    for _ in range(_check_episodes(episodes)):
        states, _, rewards = sample_episode(P, R, policy, rng, start)
        first = {}
        for t, s in enumerate(states):
            first.setdefault(s, t)
        G = 0.0
        for t in range(len(states) - 1, -1, -1):
            G = rewards[t] + gamma * G
            s = states[t]
            if first[s] == t:
                N[s] += 1
                V[s] += (G - V[s]) / N[s]
    return V, N


def td_prediction(
    P: np.ndarray, R: np.ndarray, policy: np.ndarray, gamma: float, episodes: int,
    *, alpha: float | None = 0.1, start: int | None = None, seed: int | None = None,
) -> np.ndarray:
    """TD(0) prediction of ``v_pi`` (Sutton & Barto, section 6.1):

    ``V(S_t) <- V(S_t) + alpha [R_{t+1} + gamma V(S_{t+1}) - V(S_t)]``, with ``V = 0`` after
    the episode ends. The target *bootstraps* on the current estimate of the next state, so it
    can update after every step. ``alpha=None`` uses ``1/n**0.7`` for the n-th update of a state.
    """
    P, R, gamma = check_mdp(P, R, gamma)
    alpha = _check_step_size(alpha)
    rng = np.random.default_rng(seed)
    S, A = R.shape
    pi = policy_matrix(policy, S, A)
    cum_pi, cum_P = np.cumsum(pi, axis=1), np.cumsum(P, axis=2)
    cum_pi[:, -1] = 1.0
    V, N = np.zeros(S), np.zeros(S)
    for _ in range(_check_episodes(episodes)):
        s = int(rng.integers(S)) if start is None else int(start)
        for _ in range(1_000):
            a = _draw(cum_pi[s], rng)
            s_next = _draw(cum_P[s, a], rng)
            target = R[s, a] + (gamma * V[s_next] if s_next is not None else 0.0)  # bootstrap
            N[s] += 1
            V[s] += _step_size(alpha, N[s]) * (target - V[s])
            if s_next is None:
                break
            s = s_next
    return V


@dataclass
class TDControlResult:
    """What :func:`td_control` learned: ``Q`` ``(S, A)``, the return of every episode and,
    if ``Q_star`` was given, ``max |Q - Q_star|`` after every episode."""

    Q: np.ndarray
    returns: np.ndarray
    errors: np.ndarray


def td_control(
    P: np.ndarray, R: np.ndarray, gamma: float, episodes: int, *, method: str = "q_learning",
    alpha: float | None = 0.1, epsilon: float = 0.1, start: int | None = None,
    Q_star: np.ndarray | None = None, max_steps: int = 1_000, seed: int | None = None,
) -> TDControlResult:
    """Tabular TD control with an epsilon-greedy behaviour policy (Sutton & Barto, 6.4-6.5).

    After each step ``(S, A, R, S')`` the estimate moves towards a one-step target:

    * Q-learning (off-policy, Watkins & Dayan 1992): ``R + gamma max_a' Q(S', a')``; it learns
      ``q_*`` whatever exploratory policy collects the data.
    * SARSA (on-policy, Rummery & Niranjan 1994): ``R + gamma Q(S', A')`` with ``A'`` the action
      the epsilon-greedy policy really takes next; it learns the values of that policy,
      exploration included.

    ``Q(S, A) <- Q(S, A) + alpha [target - Q(S, A)]`` with a constant ``alpha``, or ``1/n**0.7``
    for the n-th update of a pair when ``alpha=None``. After the episode ends the target is ``R``.
    ``start=None`` starts every episode in a uniformly random state (exploring starts).
    """
    P, R, gamma = check_mdp(P, R, gamma)
    if method not in ("q_learning", "sarsa"):
        raise ValueError(f"method must be 'q_learning' or 'sarsa', got {method!r}")
    alpha = _check_step_size(alpha)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
    episodes = _check_episodes(episodes)
    rng = np.random.default_rng(seed)
    S, A = R.shape
    cum_P = np.cumsum(P, axis=2)
    Q, N = np.zeros((S, A)), np.zeros((S, A))
    returns, errors = np.zeros(episodes), np.full(episodes, np.nan)

    def act(s: int) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(A))
        best = np.flatnonzero(Q[s] == Q[s].max())
        return int(rng.choice(best))  # break ties at random, or an untried action may never be tried

    for i in range(episodes):
        s = int(rng.integers(S)) if start is None else int(start)
        a = act(s)
        G, discount = 0.0, 1.0
        for _ in range(int(max_steps)):
            r = R[s, a]
            G += discount * r
            discount *= gamma
            s_next = _draw(cum_P[s, a], rng)
            a_next = act(s_next) if s_next is not None else None
            if s_next is None:
                target = r
            elif method == "q_learning":
                target = r + gamma * Q[s_next].max()
            else:
                target = r + gamma * Q[s_next, a_next]
            N[s, a] += 1
            Q[s, a] += _step_size(alpha, N[s, a]) * (target - Q[s, a])
            if s_next is None:
                break
            s, a = s_next, a_next
        returns[i] = G
        if Q_star is not None:
            errors[i] = np.abs(Q - Q_star).max()
    return TDControlResult(Q, returns, errors)
