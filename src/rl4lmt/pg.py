"""Policy gradients (chapter 4): returns, REINFORCE, baselines, actor-critic, PPO's clipped
objective, and a language model as a policy.

Notation (lecture 2). An episode is ``S_0, A_0, R_1, S_1, A_1, R_2, ..., S_{T-1}, A_{T-1}, R_T``;
the policy :math:`\\pi_\\theta(a \\mid s)` is a network with parameters :math:`\\theta`; the return
from step ``t`` on is :math:`G_t = \\sum_{k=t+1}^{T} \\gamma^{k-t-1} R_k = R_{t+1} + \\gamma G_{t+1}`.
In code, ``rewards[t]`` is :math:`R_{t+1}`, the reward that *follows* action :math:`A_t`, so that
``rewards``, ``logprobs`` and ``returns`` of one episode are all indexed by ``t = 0 .. T-1``.
The objective is :math:`J(\\theta) = \\mathbb E_{\\tau \\sim \\pi_\\theta}[G_0]`; the policy-gradient
theorem (log-derivative trick) gives

.. math::
   \\nabla_\\theta J = \\mathbb E\\Big[\\sum_t \\nabla_\\theta \\log \\pi_\\theta(A_t \\mid S_t)\\,(G_t - b(S_t))\\Big],

for any baseline :math:`b` that does not depend on the action. Every loss below is written so
that *minimising* it with a torch optimiser *ascends* :math:`J` (the sign the lecture's
gradient-ascent update has).

What lives here, in the order chapter 4 teaches it:

1. returns: :func:`discounted_returns` (returns-to-go, the reversed accumulation);
2. REINFORCE: :func:`reinforce_loss` (the weight ``G_t - b`` is detached: a stop-gradient);
3. baselines: :func:`batch_mean_baseline`, :func:`leave_one_out_baseline` (unbiased, as TRL's
   RLOO uses it), :func:`normalize_advantages`;
4. actor-critic: :class:`MLPPolicy`, :class:`MLPValue`, :func:`value_loss`,
   :func:`td_advantages` (one-step advantage :math:`\\delta_t`); GAE lives in ``rl4lmt.ppo``;
5. a gymnasium control task: :func:`collect_episodes`, :func:`train_reinforce` (REINFORCE,
   REINFORCE with a learned baseline, one-step actor-critic on e.g. CartPole-v1);
6. trust regions: :func:`ppo_clip_loss` (PPO's clipped surrogate, Schulman et al. 2017), and
   :func:`train_ppo`, a short PPO on a gymnasium task (e.g. CartPole-v1) with that loss;
7. an LM as a policy: :func:`sample_rollouts` (:func:`rl4lmt.decoding.sample` + per-token log-probs),
   :func:`response_logprobs`, :func:`sequence_kl` (sample estimate of KL to the reference
   model), :func:`exact_token_kl` (the exact per-token KL summed over the sequence),
   :func:`reinforce_lm_step` and :func:`train_reinforce_lm`.

References: Williams (1992) REINFORCE; Sutton & Barto (2018) ch. 13; Schulman et al. (2015)
TRPO and (2017) PPO; Ziegler et al. (2019) for the KL-penalised LM objective; Ahmadian et al.
(2024) / TRL's ``RLOOTrainer`` for the leave-one-out baseline.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from rl4lmt import decoding
from rl4lmt.lm import shifted_logprobs
from rl4lmt.utils import model_device, set_seed

__all__ = [
    "discounted_returns",
    "reinforce_loss",
    "batch_mean_baseline",
    "leave_one_out_baseline",
    "normalize_advantages",
    "MLPPolicy",
    "MLPValue",
    "value_loss",
    "td_advantages",
    "Episode",
    "collect_episodes",
    "train_reinforce",
    "ppo_clip_loss",
    "Rollout",
    "sample_rollouts",
    "response_logprobs",
    "sequence_kl",
    "exact_token_kl",
    "reinforce_lm_step",
    "train_reinforce_lm",
    "train_ppo",
]


# ----------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------
def _as_float_tensor(x, name: str) -> torch.Tensor:
    """A float tensor from a tensor/array/list; rejects strings, non-finite values and 0-d input."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a tensor, array or list of numbers, got {type(x).__name__}")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.get_default_dtype())
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold numbers: {err}") from None
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32)):
        raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.float()
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (time), got a scalar")
    if not torch.isfinite(x.detach()).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_mask(mask, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like)
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(device=like.device, dtype=like.dtype)


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)):
        raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    return float(gamma)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# 1. Returns
# ----------------------------------------------------------------------------------------------
def discounted_returns(rewards, gamma: float = 1.0) -> torch.Tensor:
    """Returns-to-go :math:`G_t = R_{t+1} + \\gamma G_{t+1}` (with :math:`G_T = 0`), time on the last axis.

    ``rewards[..., t]`` is :math:`R_{t+1}`; the result has the same shape and
    ``out[..., t] = sum_{k >= t} gamma**(k - t) * rewards[..., k]``. The recursion runs *backwards*
    in time (the last return first), one pass, O(T). Batches of episodes of different lengths
    work when the rewards after an episode's end are 0 (right padding).

    Example (Spinning Up's ``discount_cumsum``): rewards ``[1, 1, 1]`` with ``gamma=0.5`` give
    returns ``[1.75, 1.5, 1.0]``.

    Taught in chapter 4, "Returns and returns-to-go".
    """
    r = _as_float_tensor(rewards, "rewards")
    gamma = _check_gamma(gamma)
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[..., 0])  # G_T = 0: nothing follows the last step
    for t in reversed(range(r.shape[-1])):  # backwards: G_t needs G_{t+1}
        running = r[..., t] + gamma * running
        returns[..., t] = running
    return returns


# ----------------------------------------------------------------------------------------------
# 2. REINFORCE
# ----------------------------------------------------------------------------------------------
def reinforce_loss(logprobs: torch.Tensor, returns, baseline=None, mask=None) -> torch.Tensor:
    """REINFORCE surrogate loss
    :math:`L(\\theta) = -\\frac1m\\sum_i\\sum_t \\log\\pi_\\theta(A^i_t \\mid S^i_t)\\,(G^i_t - b^i_t)`.

    Its gradient is minus the sample estimate of :math:`\\nabla_\\theta J` (Williams 1992), so a
    descent step on it is the lecture's ascent step
    :math:`\\theta \\leftarrow \\theta + \\alpha (G_t - b)\\nabla\\log\\pi(A_t \\mid S_t)`.

    Args:
        logprobs: :math:`\\log\\pi_\\theta(A_t \\mid S_t)`, shape ``(T,)`` for one episode or
            ``(m, T)`` for ``m`` episodes (time last); must carry the graph to :math:`\\theta`.
        returns: the weights :math:`G_t` (returns-to-go, or the whole return :math:`G_0` repeated),
            broadcastable to ``logprobs``; e.g. ``(m, 1)`` for one number per sequence.
        baseline: :math:`b_t`, broadcastable to ``logprobs`` (``None``: no baseline).
        mask: 1 on real steps, 0 on padding (same shape as ``logprobs``).

    The weight :math:`G_t - b_t` is a *constant* in the gradient: it is detached here, so no
    gradient reaches a learned baseline (a critic) through the policy loss. The sum runs over time
    and the mean over episodes: exactly the estimator of the policy-gradient theorem (libraries
    that average over all time steps instead only rescale the step size).

    Taught in chapter 4, "REINFORCE".
    """
    if not isinstance(logprobs, torch.Tensor) or not logprobs.is_floating_point():
        raise TypeError(f"logprobs must be a float tensor, got {type(logprobs).__name__}")
    if logprobs.dim() not in (1, 2):
        raise ValueError(f"logprobs must have shape (T,) or (m, T), got {tuple(logprobs.shape)}")
    weights = _as_float_tensor(returns, "returns").to(logprobs.device)
    if baseline is not None:
        weights = weights - _as_float_tensor(baseline, "baseline").to(logprobs.device)
    try:
        weights = torch.broadcast_to(weights, logprobs.shape)
    except RuntimeError:
        raise ValueError(
            f"returns/baseline of shape {tuple(weights.shape)} do not broadcast to logprobs {tuple(logprobs.shape)}"
        ) from None
    mask = _check_mask(mask, logprobs)
    weights = weights.detach()  # stop-gradient: G_t - b is a number, not a function of theta
    per_episode = (logprobs * weights * mask).sum(-1)  # sum over time ...
    return -per_episode.mean()  # ... mean over episodes; minus: descend the loss = ascend J


# ----------------------------------------------------------------------------------------------
# 3. Baselines
# ----------------------------------------------------------------------------------------------
def batch_mean_baseline(returns) -> torch.Tensor:
    """:math:`b = \\frac1m\\sum_j G^j`: the mean return of the batch, over its first axis.

    Cheap and effective, but *slightly biased*: each sample's own return is part of its
    baseline, which shrinks the expected gradient by the factor :math:`(m-1)/m`
    (see :func:`leave_one_out_baseline` for the unbiased version). Shape ``(m, ...)`` in,
    same shape out (broadcast back).

    Taught in chapter 4, "Baselines".
    """
    g = _as_float_tensor(returns, "returns")
    return g.mean(0, keepdim=True).expand_as(g)


def leave_one_out_baseline(returns) -> torch.Tensor:
    """:math:`b^i = \\frac{1}{m-1}\\sum_{j \\ne i} G^j`: the mean return of the *other* samples.

    Independent of sample ``i``'s own action, so the estimator stays unbiased; this is the
    baseline of RLOO (Kool et al. 2019; Ahmadian et al. 2024; TRL's ``RLOOTrainer``). Written as
    ``(sum - own) / (m - 1)``. Needs ``m >= 2`` samples along the first axis.

    Taught in chapter 4, "Baselines".
    """
    g = _as_float_tensor(returns, "returns")
    m = g.shape[0]
    if m < 2:
        raise ValueError(f"returns must hold at least 2 samples along axis 0 for a leave-one-out baseline, got {m}")
    return (g.sum(0, keepdim=True) - g) / (m - 1)


def normalize_advantages(advantages, eps: float = 1e-8) -> torch.Tensor:
    """Whitening :math:`(A - \\bar A)/(\\mathrm{std}(A) + \\epsilon)` over all entries.

    Not a baseline in the theorem's sense (it rescales by a batch statistic), but the standard
    trick of PPO implementations: a step size that does not depend on the reward's scale.
    """
    a = _as_float_tensor(advantages, "advantages")
    if a.numel() < 2:
        raise ValueError("advantages must hold at least 2 numbers to be normalised")
    return (a - a.mean()) / (a.std() + eps)


# ----------------------------------------------------------------------------------------------
# 4. Actor-critic pieces
# ----------------------------------------------------------------------------------------------
def _mlp(sizes: Sequence[int], out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        # orthogonal init, small last layer (CleanRL detail): the initial policy is near uniform
        nn.init.orthogonal_(linear.weight, out_std if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MLPPolicy(nn.Module):
    """A categorical policy :math:`\\pi_\\theta(a \\mid s) = \\mathrm{softmax}(f_\\theta(s))_a` (the actor).

    ``forward(obs)`` returns the logits ``(..., n_actions)``; :meth:`dist` the
    ``torch.distributions.Categorical`` to sample from and to score actions with.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 32):
        super().__init__()
        for name, val in (("obs_dim", obs_dim), ("n_actions", n_actions), ("hidden", hidden)):
            _check_positive_int(name, val)
        self.net = _mlp([obs_dim, hidden, hidden, n_actions], out_std=0.01)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def dist(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self(obs))


class MLPValue(nn.Module):
    """A state-value network :math:`\\hat v(s, \\mathbf w)` (the critic): ``forward(obs) -> (...,)``."""

    def __init__(self, obs_dim: int, hidden: int = 32):
        super().__init__()
        _check_positive_int("obs_dim", obs_dim)
        _check_positive_int("hidden", hidden)
        self.net = _mlp([obs_dim, hidden, hidden, 1], out_std=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)  # (..., 1) -> (...): a value per state, not a column


def value_loss(values: torch.Tensor, targets, mask=None) -> torch.Tensor:
    """Critic regression :math:`\\frac12\\,\\mathrm{mean}_t (\\hat v(S_t) - y_t)^2` toward detached targets.

    ``targets`` are Monte-Carlo returns :math:`G_t` (REINFORCE with baseline) or TD targets
    :math:`R_{t+1} + \\gamma \\hat v(S_{t+1})` (actor-critic); they are detached so that the critic
    chases its target instead of dragging the target along. Shapes must match exactly (a
    ``(T, 1)`` against ``(T,)`` would silently broadcast to ``(T, T)``).
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"values must be a float tensor, got {type(values).__name__}")
    y = _as_float_tensor(targets, "targets").to(values.device)
    if y.shape != values.shape:
        raise ValueError(f"targets must have the shape of values {tuple(values.shape)}, got {tuple(y.shape)}")
    mask = _check_mask(mask, values)
    return 0.5 * (((values - y.detach()) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)


def td_advantages(rewards, values, gamma: float = 1.0, last_value: float = 0.0) -> torch.Tensor:
    """One-step advantage (TD error) :math:`\\delta_t = R_{t+1} + \\gamma\\hat v(S_{t+1}) - \\hat v(S_t)`.

    ``values[t]`` is :math:`\\hat v(S_t)` for ``t = 0..T-1``; ``last_value`` is
    :math:`\\hat v(S_T)`: 0 when the episode *terminated* (no future reward), the critic's value of
    the last state when it was *truncated* (cut off by a time limit). The lecture's actor-critic
    update uses :math:`G_{t:t+1} - \\hat v = \\delta_t`. Time on the last axis; the result is
    detached (an advantage is a weight, never a path for gradients).

    Taught in chapter 4, "Actor-critic".
    """
    r = _as_float_tensor(rewards, "rewards")
    v = _as_float_tensor(values, "values").detach().to(r.device)
    if v.shape != r.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(r.shape)}, got {tuple(v.shape)}")
    gamma = _check_gamma(gamma)
    last = torch.as_tensor(last_value, dtype=r.dtype, device=r.device)
    if not torch.isfinite(last).all():
        raise ValueError("last_value must be finite")
    next_v = torch.cat([v[..., 1:], torch.broadcast_to(last, v[..., :1].shape)], dim=-1)  # v(S_{t+1})
    return (r + gamma * next_v - v).detach()


# ----------------------------------------------------------------------------------------------
# 5. A gymnasium control task
# ----------------------------------------------------------------------------------------------
class Episode(NamedTuple):
    """One episode: ``obs (T, obs_dim)``, ``actions (T,)``, ``rewards (T,)`` (``rewards[t] = R_{t+1}``),
    whether it ended by termination (``True``) or was truncated by a time limit, and the state
    :math:`S_T` it ended in (``last_obs``, needed to bootstrap :math:`\\hat v(S_T)` after a truncation)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: bool
    last_obs: torch.Tensor


@torch.no_grad()
def collect_episodes(envs: Sequence, policy: MLPPolicy, seeds: Sequence[int | None] | None = None) -> list[Episode]:
    """Run ``policy`` for one episode in each gymnasium env of ``envs``, in lock-step.

    All live envs take a step together, so one batched forward pass of the policy serves them
    all (the per-call overhead of a tiny network dominates on a CPU). Actions are sampled from
    :math:`\\pi_\\theta(\\cdot \\mid S_t)` without gradients; the log-probs are recomputed with
    gradients in one batched pass at update time (cheaper than keeping T graphs alive).
    ``seeds[i]`` seeds env ``i``'s reset (``None``: continue its own random stream).
    """
    envs = list(envs)
    if not envs:
        raise ValueError("envs must hold at least one environment")
    seeds = [None] * len(envs) if seeds is None else list(seeds)
    if len(seeds) != len(envs):
        raise ValueError(f"seeds must have one entry per env ({len(envs)}), got {len(seeds)}")
    obs = [np.asarray(env.reset(seed=s)[0], dtype=np.float32) for env, s in zip(envs, seeds)]
    traj = [([], [], []) for _ in envs]  # per env: observations, actions, rewards (plain Python: cheap appends)
    ended: list = [None] * len(envs)  # per env: (terminated, last_obs) once it is over
    live = list(range(len(envs)))
    while live:
        o = np.stack([obs[i] for i in live])  # (n_live, obs_dim)
        probs = torch.softmax(policy(torch.from_numpy(o)), dim=-1)
        actions = torch.multinomial(probs, 1).squeeze(1).tolist()  # A_t ~ pi(. | S_t), one per live env
        still = []
        for k, i in enumerate(live):
            next_obs, r, terminated, truncated, _ = envs[i].step(actions[k])
            traj[i][0].append(obs[i])
            traj[i][1].append(actions[k])
            traj[i][2].append(float(r))
            obs[i] = np.asarray(next_obs, dtype=np.float32)
            if terminated or truncated:
                ended[i] = (bool(terminated), torch.from_numpy(obs[i]))
            else:
                still.append(i)
        live = still
    return [
        Episode(torch.from_numpy(np.stack(o_)), torch.tensor(a_), torch.tensor(r_), term, last)
        for (o_, a_, r_), (term, last) in zip(traj, ended)
    ]


def train_reinforce(
    env_id: str = "CartPole-v1",
    *,
    method: str = "baseline",
    iterations: int = 40,
    episodes_per_iteration: int = 8,
    gamma: float = 0.99,
    lr: float = 1e-2,
    value_lr: float = 1e-2,
    value_steps: int = 5,
    hidden: int = 32,
    seed: int = 0,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Train a policy on a gymnasium task with a policy-gradient method; return every episode's return.

    ``method``:

    - ``"reinforce"``: weights :math:`G_t` (returns-to-go), no baseline;
    - ``"baseline"``: weights :math:`G_t - \\hat v(S_t)`, the critic fitted to :math:`G_t`
      (REINFORCE with baseline, Sutton & Barto 13.4);
    - ``"actor_critic"``: weights :math:`\\delta_t` (:func:`td_advantages`), the critic fitted to the
      one-step TD target (Sutton & Barto 13.5, batched over whole episodes).

    Each iteration collects ``episodes_per_iteration`` episodes with the current policy, then
    takes one Adam step on :func:`reinforce_loss`, then ``value_steps`` Adam steps of the critic on
    :func:`value_loss` toward targets fixed before the update (Spinning Up's VPG fits its value
    function with several steps per batch, too). Each env is seeded at its first reset from
    ``seed``, so the same arguments give the same curve.

    Returns:
        float array ``(iterations * episodes_per_iteration,)``: undiscounted return per episode.

    Taught in chapter 4, "REINFORCE on CartPole".
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    if method not in ("reinforce", "baseline", "actor_critic"):
        raise ValueError(f"method must be 'reinforce', 'baseline' or 'actor_critic', got {method!r}")
    _check_positive_int("iterations", iterations)
    _check_positive_int("episodes_per_iteration", episodes_per_iteration)
    _check_positive_int("value_steps", value_steps)
    gamma = _check_gamma(gamma)
    set_seed(seed)
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [gym.make(env_id, **kwargs) for _ in range(episodes_per_iteration)]
    obs_dim = int(np.prod(envs[0].observation_space.shape))
    n_actions = int(envs[0].action_space.n)
    policy, critic = MLPPolicy(obs_dim, n_actions, hidden), MLPValue(obs_dim, hidden)
    opt_pi = torch.optim.Adam(policy.parameters(), lr=lr)
    opt_v = torch.optim.Adam(critic.parameters(), lr=value_lr)
    history = []
    for it in tqdm(range(iterations), disable=not progress, desc=f"{method} seed {seed}", mininterval=1.0):
        # rollout: seed each env's first reset only, later resets continue the env's own RNG
        first = [1000 * seed + k for k in range(len(envs))] if it == 0 else None
        eps = collect_episodes(envs, policy, first)
        history += [float(e.rewards.sum()) for e in eps]
        # pad the batch to (m, T_max): zero rewards after the end keep the returns right
        T = max(len(e.rewards) for e in eps)
        mask = torch.zeros(len(eps), T)
        obs = torch.zeros(len(eps), T, obs_dim)
        actions = torch.zeros(len(eps), T, dtype=torch.long)
        rewards = torch.zeros(len(eps), T)
        for i, e in enumerate(eps):
            n = len(e.rewards)
            mask[i, :n], obs[i, :n], actions[i, :n], rewards[i, :n] = 1.0, e.obs, e.actions, e.rewards
        returns = discounted_returns(rewards, gamma)  # (m, T) returns-to-go
        logp = policy.dist(obs).log_prob(actions)  # (m, T), with gradients
        values = critic(obs)  # (m, T)
        if method == "reinforce":
            weights = returns
        elif method == "baseline":
            weights = returns - values.detach()
            targets = returns
        else:
            weights = torch.zeros_like(rewards)
            for i, e in enumerate(eps):  # per episode: its own length and its own v(S_T)
                n = len(e.rewards)
                with torch.no_grad():  # v(S_T): 0 after termination, the critic's value after truncation
                    last = 0.0 if e.terminated else float(critic(e.last_obs))
                weights[i, :n] = td_advantages(e.rewards, values[i, :n], gamma, last_value=last)  # delta_t
            targets = weights + values.detach()  # TD target R_{t+1} + gamma v(S_{t+1}) = delta_t + v(S_t)
        loss_pi = reinforce_loss(logp, weights, mask=mask)
        opt_pi.zero_grad(set_to_none=True)
        loss_pi.backward()
        opt_pi.step()
        if method != "reinforce":
            targets = targets.detach()  # fixed regression targets for all critic steps
            for k in range(value_steps):
                loss_v = value_loss(values if k == 0 else critic(obs), targets, mask=mask)
                opt_v.zero_grad(set_to_none=True)
                loss_v.backward()
                opt_v.step()
    for env in envs:
        env.close()
    return np.asarray(history)


# ----------------------------------------------------------------------------------------------
# 6. Trust regions: PPO's clipped surrogate
# ----------------------------------------------------------------------------------------------
def ppo_clip_loss(
    logprobs: torch.Tensor, old_logprobs, advantages, clip_eps: float = 0.2, mask=None
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, negated:
    :math:`L^{CLIP} = \\hat{\\mathbb E}_t[\\min(r_t\\hat A_t,\\
    \\mathrm{clip}(r_t, 1-\\epsilon, 1+\\epsilon)\\hat A_t)]`.

    :math:`r_t(\\theta) = \\pi_\\theta(a_t \\mid s_t)/\\pi_{\\theta_{old}}(a_t \\mid s_t)
    = \\exp(\\log\\pi_\\theta - \\log\\pi_{old})` is the importance ratio of the surrogate
    :math:`L^{CPI}` (TRPO); the min with the clipped term removes the incentive to move :math:`r_t`
    outside :math:`[1-\\epsilon, 1+\\epsilon]` (Schulman et al. 2017). At :math:`\\theta = \\theta_{old}` its
    gradient equals the (time-averaged) policy gradient.

    Args:
        logprobs: :math:`\\log\\pi_\\theta(a_t \\mid s_t)` with gradients, any shape.
        old_logprobs: :math:`\\log\\pi_{\\theta_{old}}` of the same actions (detached), same shape.
        advantages: :math:`\\hat A_t` (detached), same shape.
        clip_eps: :math:`\\epsilon > 0`.
        mask: 1 where an entry counts (the mean runs over those entries).

    Returns:
        ``(loss, info)``; ``info`` holds ``approx_kl`` (the k3 estimator
        :math:`\\mathbb E[(r - 1) - \\log r]` of KL(old ‖ new)) and ``clipfrac`` (share of entries whose
        ratio lies outside the clip range), both plain floats.

    Taught in chapter 4, "Importance sampling, trust regions and PPO".
    """
    if not isinstance(logprobs, torch.Tensor) or not logprobs.is_floating_point():
        raise TypeError(f"logprobs must be a float tensor, got {type(logprobs).__name__}")
    if isinstance(clip_eps, bool) or not isinstance(clip_eps, (int, float)) or not clip_eps > 0:
        raise ValueError(f"clip_eps must be a positive number, got {clip_eps!r}")
    old = _as_float_tensor(old_logprobs, "old_logprobs").to(logprobs.device)
    adv = _as_float_tensor(advantages, "advantages").to(logprobs.device)
    for name, t in (("old_logprobs", old), ("advantages", adv)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(t.shape)}")
    mask = _check_mask(mask, logprobs)
    old, adv = old.detach(), adv.detach()  # both are numbers from the rollout, not functions of theta
    log_ratio = logprobs - old
    ratio = log_ratio.exp()  # r_t(theta)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    objective = torch.minimum(unclipped, clipped)  # pessimistic: a lower bound on the unclipped
    n = mask.sum().clamp(min=1.0)
    loss = -(objective * mask).sum() / n
    with torch.no_grad():
        approx_kl = (((ratio - 1.0) - log_ratio) * mask).sum() / n
        clipfrac = ((((ratio - 1.0).abs() > clip_eps).to(mask.dtype)) * mask).sum() / n
    return loss, {"approx_kl": float(approx_kl), "clipfrac": float(clipfrac)}


# ----------------------------------------------------------------------------------------------
# 7. A language model as a policy
# ----------------------------------------------------------------------------------------------
class Rollout(NamedTuple):
    """A batch of sampled continuations (the trajectories of the LM policy).

    - ``input_ids`` ``(B, T)``: BOS, prompt, response, right-padded with the pad id;
    - ``attention_mask`` ``(B, T)``: 1 on BOS, prompt and response tokens (incl. the EOS);
    - ``response_mask`` ``(B, T - 1)``: aligned with :func:`rl4lmt.lm.shifted_logprobs`; 1 where the
      *target* token is a sampled response token (the actions :math:`A_t`), 0 on prompt and pad;
    - ``texts``: each full review as words (prompt + response, without the EOS);
    - ``finished`` ``(B,)``: True where the model produced its EOS within ``max_new_tokens``
      (an unfinished text is not a complete review; the world gives it the worst reward).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    texts: list
    finished: torch.Tensor


@torch.no_grad()
def sample_rollouts(
    policy,
    tokenizer,
    n: int,
    *,
    prompt: str = "",
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``n`` continuations of ``prompt`` from the LM policy with :func:`rl4lmt.decoding.sample`.

    Pure ancestral sampling from the model's own softmax (no top-k, no top-p): the behaviour
    policy must be the very distribution whose log-probs REINFORCE differentiates. The sampler is
    the package's own, not ``model.generate``, so a checkpoint's ``generation_config``
    (repetition penalty, suppressed tokens, a minimum length, top-k...) cannot make the sampled
    policy differ from the scored one. The state :math:`S_t` is the text so far, the action
    :math:`A_t` the next token; the episode ends at EOS. ``generator`` (a seeded
    ``torch.Generator`` on the policy's device) makes the draws reproducible without touching
    torch's global generator; without it, seed with ``rl4lmt.set_seed`` before calling (the
    draws are then those of ``generate`` with the same seed and a clean config).

    Taught in chapter 4, "A language model as a policy".
    """
    n = _check_positive_int("n", n)
    max_new_tokens = _check_positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id: an LM policy needs an end-of-sequence action")
    pad = eos if pad is None else pad
    device = model_device(policy)
    prompt_ids = list(tokenizer(prompt)["input_ids"])  # the course tokenizer prepends the BOS
    if not prompt_ids:
        raise ValueError("the tokenizer gave no tokens for the prompt; it must prepend a BOS token")
    p_len = len(prompt_ids)
    start = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
    # the package's sampler: the model's softmax (at `temperature`), nothing else; finished rows
    # are filled with EOS (replaced by the pad id below)
    out = decoding.sample(policy, start, max_new_tokens, temperature=float(temperature), generator=generator,
                          eos_token_id=eos, pad_token_id=eos)
    resp = out[:, p_len:]  # (B, L) sampled tokens, pad after each row's EOS
    is_eos = resp == eos
    finished = is_eos.any(1)
    # response length: up to and including the first EOS, else the whole budget
    last = torch.full_like(finished, resp.shape[1] - 1, dtype=torch.long)
    first_eos = torch.where(finished, is_eos.float().argmax(1), last)
    keep = torch.arange(resp.shape[1], device=device)[None, :] <= first_eos[:, None]  # (B, L)
    attention_mask = torch.cat([torch.ones(n, p_len, dtype=torch.long, device=device), keep.long()], dim=1)
    input_ids = torch.where(attention_mask.bool(), out, torch.full_like(out, pad))
    response_mask = torch.zeros(n, out.shape[1] - 1, dtype=torch.float32, device=device)
    response_mask[:, p_len - 1 :] = keep.float()  # target index j predicts token j + 1
    prompt_words = prompt.split()
    texts = []
    for i in range(n):
        words = tokenizer.convert_ids_to_tokens(resp[i][keep[i]].tolist())
        if finished[i]:
            words = words[:-1]  # the EOS is an event, not a word of the text
        texts.append(" ".join(prompt_words + words))
    return Rollout(input_ids, attention_mask, response_mask, texts, finished)


def response_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """Per-token :math:`\\log\\pi(A_t \\mid S_t)` of the sampled response tokens, ``(B, T - 1)``, 0 elsewhere.

    One teacher-forced forward pass over the whole rollout (:func:`rl4lmt.lm.shifted_logprobs`);
    gradients flow unless called under ``torch.no_grad()``. Summing over the last axis gives
    :math:`\\log\\pi(\\tau)`, the log-probability of the whole continuation: the environment (the
    transition "append the token") is deterministic, so it contributes nothing to it.
    """
    if not isinstance(rollout, Rollout):
        raise TypeError(f"rollout must be a Rollout from sample_rollouts, got {type(rollout).__name__}")
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits
    return shifted_logprobs(logits, rollout.input_ids) * rollout.response_mask


def sequence_kl(logprobs, ref_logprobs, mask) -> torch.Tensor:
    """Sample estimate of :math:`\\mathrm{KL}(\\pi \\Vert \\pi_{ref})` per sequence:
    :math:`\\sum_t (\\log\\pi(y_t) - \\log\\pi_{ref}(y_t))`.

    For :math:`y \\sim \\pi`,
    :math:`\\mathbb E_y[\\log\\pi(y) - \\log\\pi_{ref}(y)] = \\mathrm{KL}(\\pi \\Vert \\pi_{ref})`
    over whole sequences, and :math:`\\log\\pi(y)` is the sum of the per-token log-probs, so this
    is unbiased (one sample may be negative). It is the penalty in the KL-shaped reward
    :math:`R(y) - \\beta\\,\\log\\frac{\\pi(y)}{\\pi_{ref}(y)}` (Ziegler et al. 2019). All inputs
    ``(B, T)``; returns ``(B,)``.
    """
    lp = _as_float_tensor(logprobs, "logprobs")
    ref = _as_float_tensor(ref_logprobs, "ref_logprobs").to(lp.device)
    if ref.shape != lp.shape:
        raise ValueError(f"ref_logprobs must have the shape of logprobs {tuple(lp.shape)}, got {tuple(ref.shape)}")
    mask = _check_mask(mask, lp)
    return ((lp - ref) * mask).sum(-1)


def exact_token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask) -> torch.Tensor:
    """:math:`\\sum_t \\mathrm{KL}(\\pi(\\cdot \\mid S_t) \\Vert \\pi_{ref}(\\cdot \\mid S_t))` per sequence, each term
    exact.

    The per-token KL sums over the whole vocabulary,
    :math:`\\sum_v \\pi(v)(\\log\\pi(v) - \\log\\pi_{ref}(v))`,
    at every visited state :math:`S_t`. Its expectation over rollouts equals that of
    :func:`sequence_kl` (the chain rule of KL), with lower variance; it needs both models' full
    logits. ``logits`` and ``ref_logits`` ``(B, T, V)`` are the *predicting* positions (use
    ``logits[:, :-1]`` of a causal LM to align with ``mask`` ``(B, T)``); returns ``(B,)``.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(ref_logits, torch.Tensor):
        raise TypeError("logits and ref_logits must be tensors")
    if logits.dim() != 3 or logits.shape != ref_logits.shape:
        raise ValueError(f"logits and ref_logits must both be (B, T, V), "
                         f"got {tuple(logits.shape)} and {tuple(ref_logits.shape)}")
    logp = torch.log_softmax(logits.float(), -1)
    ref = torch.log_softmax(ref_logits.float(), -1)
    per_token = (logp.exp() * (logp - ref)).sum(-1)  # (B, T) exact KL at each state
    mask = _check_mask(mask, per_token)
    return (per_token * mask).sum(-1)


def reinforce_lm_step(
    policy,
    ref,
    tokenizer,
    reward_fn: Callable[[list], Sequence[float]],
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int = 32,
    kl_coef: float = 0.0,
    prompt: str = "",
    max_new_tokens: int = 32,
    baseline: str = "leave_one_out",
) -> dict:
    """One REINFORCE step for an LM policy with a KL penalty to a frozen reference model.

    1. sample ``batch_size`` continuations :math:`y^i \\sim \\pi_\\theta(\\cdot \\mid x)` (:func:`sample_rollouts`);
    2. score them: sequence reward :math:`R(y^i)` = ``reward_fn(texts)``, and the sampled
       :math:`\\mathrm{KL}^i = \\sum_t \\log\\pi_\\theta(y^i_t) - \\log\\pi_{ref}(y^i_t)` (:func:`sequence_kl`);
    3. the KL-shaped return :math:`G^i = R(y^i) - \\beta\\,\\mathrm{KL}^i` (``kl_coef`` is :math:`\\beta`;
       0 drops the reference model's influence);
    4. advantage :math:`A^i = G^i - b^i` with the leave-one-out (or batch-mean, or no) baseline;
    5. loss :math:`-\\frac1B\\sum_i A^i \\sum_t \\log\\pi_\\theta(y^i_t)` (:func:`reinforce_loss` with one weight
       per sequence; :math:`A^i` detached) and one optimiser step.

    The policy is kept in ``eval()`` mode (no dropout): the log-probs of step 5 must be those of
    the policy that sampled in step 1.

    Returns:
        stats ``{"reward": mean R, "kl": mean KL^i, "return": mean G, "loss": float,
        "finished": share that produced EOS, "texts": the sampled texts}``.

    Taught in chapter 4, "REINFORCE on the tiny language model".
    """
    if baseline not in ("leave_one_out", "mean", "none"):
        raise ValueError(f"baseline must be 'leave_one_out', 'mean' or 'none', got {baseline!r}")
    batch_size = _check_positive_int("batch_size", batch_size)
    if baseline == "leave_one_out" and batch_size < 2:
        raise ValueError("batch_size must be >= 2 for the leave-one-out baseline")
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, (int, float)) or not kl_coef >= 0:
        raise ValueError(f"kl_coef must be a number >= 0, got {kl_coef!r}")
    policy.eval()  # no dropout: sampling and scoring must see the same policy
    roll = sample_rollouts(policy, tokenizer, batch_size, prompt=prompt, max_new_tokens=max_new_tokens)
    rewards = torch.as_tensor(np.asarray(reward_fn(roll.texts), dtype=np.float64), dtype=torch.float32)
    if rewards.shape != (batch_size,):
        raise ValueError(f"reward_fn must return one number per text ({batch_size}), got shape {tuple(rewards.shape)}")
    rewards = rewards.to(roll.input_ids.device)
    logp = response_logprobs(policy, roll)  # (B, T-1) with gradients
    with torch.no_grad():
        ref_logp = response_logprobs(ref, roll)  # the frozen reference: no gradients
    kl = sequence_kl(logp.detach(), ref_logp, roll.response_mask)  # (B,)
    returns = rewards - kl_coef * kl  # KL-shaped sequence return
    if baseline == "leave_one_out":
        b = leave_one_out_baseline(returns)
    elif baseline == "mean":
        b = batch_mean_baseline(returns)
    else:
        b = torch.zeros_like(returns)
    # one weight per sequence, broadcast over its tokens: (B, 1) against (B, T-1)
    loss = reinforce_loss(logp, returns[:, None], b[:, None], mask=roll.response_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "reward": float(rewards.mean()),
        "kl": float(kl.mean()),
        "return": float(returns.mean()),
        "loss": loss.item(),
        "finished": float(roll.finished.float().mean()),
        "texts": roll.texts,
    }


def train_reinforce_lm(
    policy,
    ref,
    tokenizer,
    reward_fn: Callable[[list], Sequence[float]],
    *,
    steps: int,
    batch_size: int = 32,
    kl_coef: float = 0.0,
    lr: float = 1e-3,
    prompt: str = "",
    max_new_tokens: int = 32,
    baseline: str = "leave_one_out",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Run :func:`reinforce_lm_step` ``steps`` times with Adam; return the stats of every step.

    ``policy`` is trained in place (pass a copy to keep the original); ``ref`` is only ever run
    under ``torch.no_grad()``, so it stays frozen (and may be the original model).
    Seeded by ``seed`` (sampling uses torch's global RNG).

    Taught in chapter 4, "REINFORCE on the tiny language model".
    """
    from tqdm.auto import tqdm

    steps = _check_positive_int("steps", steps)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    set_seed(seed)
    ref.eval()  # scored under torch.no_grad() in every step: it never changes
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    history = []
    bar = tqdm(range(steps), disable=not progress, desc=f"REINFORCE beta={kl_coef}", mininterval=1.0)
    for _ in bar:
        stats = reinforce_lm_step(
            policy, ref, tokenizer, reward_fn, optimizer, batch_size=batch_size, kl_coef=kl_coef,
            prompt=prompt, max_new_tokens=max_new_tokens, baseline=baseline,
        )
        history.append(stats)
        bar.set_postfix(reward=f"{stats['reward']:.2f}", kl=f"{stats['kl']:.2f}", refresh=False)
    return history


# ----------------------------------------------------------------------------------------------
# 8. PPO on a gymnasium control task: the clipped surrogate, seen working
# ----------------------------------------------------------------------------------------------
def train_ppo(
    env_id: str = "CartPole-v1",
    *,
    iterations: int = 25,
    episodes_per_iteration: int = 8,
    epochs: int = 4,
    minibatches: int = 4,
    clip_eps: float = 0.2,
    gamma: float = 0.99,
    lr: float = 3e-3,
    value_lr: float = 1e-2,
    hidden: int = 32,
    seed: int = 0,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[dict]]:
    """PPO with the clipped surrogate (Schulman et al. 2017) on a gymnasium task, in its simplest form.

    Each iteration collects ``episodes_per_iteration`` episodes with :math:`\\pi_{\\theta_{old}}`
    (the current policy), records :math:`\\log\\pi_{\\theta_{old}}(a_t \\mid s_t)` and the advantages
    :math:`\\hat A_t = G_t - \\hat v(S_t)` (returns-to-go minus the critic, normalised over the
    batch), then makes ``epochs`` passes over the batch in ``minibatches`` random minibatches of
    time steps, each an Adam step on :func:`ppo_clip_loss` for the policy and on
    :func:`value_loss` (towards :math:`G_t`) for the critic. Reusing one batch for
    ``epochs * minibatches`` steps is what the clipping makes safe; with ``epochs=1,
    minibatches=1`` this is REINFORCE with a baseline (one step at :math:`r_t = 1`).

    Returns:
        ``(returns, stats)``: the undiscounted return of every episode, float array
        ``(iterations * episodes_per_iteration,)``, and per iteration a dict with the last
        minibatch's ``approx_kl`` and ``clipfrac`` and the mean over the update.

    Taught in chapter 4, "PPO on CartPole".
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    for name, value in (("iterations", iterations), ("episodes_per_iteration", episodes_per_iteration),
                        ("epochs", epochs), ("minibatches", minibatches)):
        _check_positive_int(name, value)
    gamma = _check_gamma(gamma)
    if isinstance(clip_eps, bool) or not isinstance(clip_eps, (int, float)) or not clip_eps > 0:
        raise ValueError(f"clip_eps must be a positive number, got {clip_eps!r}")
    set_seed(seed)
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [gym.make(env_id, **kwargs) for _ in range(episodes_per_iteration)]
    obs_dim = int(np.prod(envs[0].observation_space.shape))
    policy, critic = MLPPolicy(obs_dim, int(envs[0].action_space.n), hidden), MLPValue(obs_dim, hidden)
    opt_pi = torch.optim.Adam(policy.parameters(), lr=lr)
    opt_v = torch.optim.Adam(critic.parameters(), lr=value_lr)
    gen = torch.Generator().manual_seed(seed)  # minibatch shuffling
    history, stats = [], []
    for it in tqdm(range(iterations), disable=not progress, desc=f"PPO seed {seed}", mininterval=1.0):
        first = [1000 * seed + k for k in range(len(envs))] if it == 0 else None
        eps = collect_episodes(envs, policy, first)
        history += [float(e.rewards.sum()) for e in eps]
        # flatten the batch to time steps: PPO's minibatches mix steps of different episodes
        obs = torch.cat([e.obs for e in eps])  # (N, obs_dim)
        actions = torch.cat([e.actions for e in eps])  # (N,)
        returns = torch.cat([discounted_returns(e.rewards, gamma) for e in eps])  # (N,) G_t
        with torch.no_grad():
            old_logp = policy.dist(obs).log_prob(actions)  # log pi_old, fixed for the whole update
            adv = normalize_advantages(returns - critic(obs))  # A_t = G_t - v(S_t), then z-scored
        n = len(actions)
        size = max(1, n // minibatches)
        kls, clips = [], []
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, size):
                idx = order[start:start + size]
                loss_pi, info = ppo_clip_loss(policy.dist(obs[idx]).log_prob(actions[idx]), old_logp[idx], adv[idx],
                                              clip_eps=clip_eps)
                opt_pi.zero_grad(set_to_none=True)
                loss_pi.backward()
                opt_pi.step()
                loss_v = value_loss(critic(obs[idx]), returns[idx])
                opt_v.zero_grad(set_to_none=True)
                loss_v.backward()
                opt_v.step()
                kls.append(info["approx_kl"])
                clips.append(info["clipfrac"])
        stats.append({"approx_kl": kls[-1], "clipfrac": clips[-1],
                      "mean_approx_kl": float(np.mean(kls)), "mean_clipfrac": float(np.mean(clips))})
    for env in envs:
        env.close()
    return np.asarray(history), stats
