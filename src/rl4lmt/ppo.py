"""PPO for language models (chapter 7): RLHF's step 3, readable top to bottom.

TRL 1.x has no PPO trainer, so this module is the course's PPO, written like CleanRL's
``ppo.py``: a config dataclass, one function per equation, and one training loop.

The objective (lecture 3, InstructGPT; lecture 5) is the KL-regularised reward

.. math:: \\max_\\theta\\ \\mathbb E_{x\\sim D,\\ y\\sim\\pi_\\theta(\\cdot\\mid x)}[r(x, y)]
          - \\beta\\,\\mathrm{KL}(\\pi_\\theta(\\cdot\\mid x)\\,\\Vert\\,\\pi_{ref}(\\cdot\\mid x)),

whose exact maximiser is :math:`\\pi^*(y\\mid x) \\propto \\pi_{ref}(y\\mid x)\\exp(r(x, y)/\\beta)`.
PPO treats it as a token-level MDP: the state is the text so far, the action the next token,
the per-token reward is :math:`-\\beta\\log\\frac{\\pi_\\theta(y_t)}{\\pi_{ref}(y_t)}` plus the reward
model's score at the last response token, a critic :math:`V_\\phi` estimates values and GAE
turns them into advantages. DPO (:func:`dpo_loss`) optimises the same objective from preference
pairs with no reward model and no sampling.

Implementation details, in the order a PPO iteration meets them (Ziegler et al. 2019;
Ouyang et al. 2022; Huang et al. 2024 "The N implementation details of RLHF with PPO"):

1. rollouts from the package's own sampler (:func:`rollout`, :func:`rl4lmt.decoding.sample`) at
   temperature 1, no top-k/top-p: the behaviour policy is exactly the scored policy;
2. dropout off (``eval()``) for policy, reference and critic: log-probs at sampling time and at
   update time come from the same function;
3. old log-probs recomputed by one teacher-forced pass, not taken from the sampler;
4. the reward model's score normalised with a gain and bias fitted on the initial policy's samples
   (Ziegler et al. 2019) (:class:`PPOConfig` ``normalize_reward``);
5. a fixed penalty score for responses that never produced EOS (Huang et al. 2024)
   (``missing_eos_penalty``);
6. per-token KL penalty, score added at the last response token (:func:`kl_shaped_rewards`);
7. an adaptive KL coefficient (:class:`AdaptiveKLController`, Ziegler et al. 2019);
8. a critic initialised from the reward model (:class:`Critic`, Ouyang et al. 2022);
9. GAE over response tokens, terminal after the last one (:func:`gae`);
10. advantage whitening over all response tokens of the batch (:func:`whiten`);
11. several epochs over shuffled minibatches of the same rollouts;
12. the clipped surrogate (:func:`rl4lmt.pg.ppo_clip_loss`) and the clipped value loss
    (:func:`clipped_value_loss`);
13. global gradient-norm clipping.

Also here: the KL estimators k1, k2, k3 (:func:`kl_estimators`) against the exact per-token KL
(:func:`exact_kl_per_token`), and the DPO loss (Rafailov et al. 2023; = TRL ``DPOTrainer``).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rl4lmt.decoding import distinct_n, sample
from rl4lmt.lm import shifted_logprobs
from rl4lmt.pg import ppo_clip_loss
from rl4lmt.utils import model_device

__all__ = [
    "PPOConfig",
    "STATS_GLOSSARY",
    "kl_estimators",
    "exact_kl_per_token",
    "kl_shaped_rewards",
    "gae",
    "whiten",
    "clipped_value_loss",
    "dpo_loss",
    "AdaptiveKLController",
    "Critic",
    "PPORollout",
    "rollout",
    "train_ppo",
    "POLICY",
    "REWARD_MODEL",
    "RLHFTask",
    "load_task",
]

#: The models chapter 7 starts from (the one place to change them): the SFT policy of chapter 5
#: and the reward model of chapter 6, both ``rl4lmt.zoo`` names.
POLICY = "tiny-reviews-sft"
REWARD_MODEL = "tiny-reviews-rm"


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """Settings of :func:`train_ppo`, grouped as rollout, reward, advantage, loss, optimisation."""

    # --- rollout -----------------------------------------------------------------------------
    iterations: int = 20
    """PPO iterations: each samples one batch of rollouts and then updates on it."""
    batch_size: int = 32
    """Prompts per iteration (one response each)."""
    max_new_tokens: int = 24
    """Response budget; a response without EOS after this many tokens is truncated."""

    # --- reward ------------------------------------------------------------------------------
    kl_coef: float = 0.05
    """β in r_t = -β (log π(y_t) - log π_ref(y_t)) (+ score at the last token); 0 drops the leash."""
    target_kl: float | None = None
    """Adaptive controller's target sequence KL (nats); None keeps β fixed (Ziegler et al. 2019)."""
    kl_horizon: int = 10_000
    """Adaptive controller's horizon (in samples): how fast β moves toward the target."""
    normalize_reward: bool = True
    """Rescale scores to mean 0, std 1 on the initial policy's samples (Ziegler et al. 2019)."""
    missing_eos_penalty: float | None = None
    """Score given to a response that never produced EOS (None: keep the reward model's score)."""

    # --- advantage ---------------------------------------------------------------------------
    gamma: float = 1.0
    """Discount γ in the TD error δ_t = r_t + γ V(s_{t+1}) - V(s_t); 1 for RLHF (Huang et al.)."""
    lam: float = 0.95
    """GAE's λ: 0 is the one-step TD advantage, 1 the Monte-Carlo return minus V."""
    whiten_advantages: bool = True
    """Whiten advantages over all response tokens of the batch (mean 0, std 1)."""

    # --- loss --------------------------------------------------------------------------------
    clip_eps: float = 0.2
    """ε of the clipped surrogate: the ratio π_θ/π_old is kept within [1-ε, 1+ε]."""
    clip_value: float | None = 0.2
    """Value clipping: V_new may move at most this far from V_old (None: plain MSE)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 in RLHF: the KL leash keeps the policy from collapsing)."""

    # --- optimisation ------------------------------------------------------------------------
    ppo_epochs: int = 4
    """Passes over each batch of rollouts."""
    minibatch_size: int = 8
    """Sequences per gradient step; must divide ``batch_size``."""
    lr: float = 3e-5
    """Adam step size of the policy."""
    critic_lr: float = 1e-4
    """Adam step size of the critic."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    seed: int = 0
    """Seeds prompt order, sampling and minibatch shuffling."""

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

        for name in ("iterations", "batch_size", "max_new_tokens", "kl_horizon", "ppo_epochs", "minibatch_size"):
            positive_int(name)
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide batch_size ({self.batch_size}): "
                "every rollout is used exactly once per epoch"
            )
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0 (it is a penalty weight), got {self.kl_coef}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be positive or None, got {self.target_kl}")
        if self.target_kl is not None and self.kl_coef == 0:
            raise ValueError("target_kl needs kl_coef > 0: the adaptive controller scales β and cannot leave 0")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.clip_eps > 0:
            raise ValueError(f"clip_eps must be positive, got {self.clip_eps}")
        if self.clip_value is not None and not self.clip_value > 0:
            raise ValueError(f"clip_value must be positive or None, got {self.clip_value}")
        for name in ("vf_coef", "entropy_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")


STATS_GLOSSARY = {
    "reward/proxy": "mean reward-model score of the batch (raw, before normalisation and KL)",
    "reward/gold": "mean gold reward of the batch (only when train_ppo gets gold_fn)",
    "reward/shaped": "mean per-sequence sum of the shaped rewards (normalised score - β·KL)",
    "kl/ref": "mean sequence KL to the reference, Σ_t log π_old(y_t) - log π_ref(y_t) (k1, nats)",
    "kl/coef": "β used for this batch (moves when target_kl is set)",
    "loss/policy": "clipped surrogate loss, mean over epochs and minibatches",
    "loss/value": "(clipped) value loss, mean over epochs and minibatches",
    "policy/approx_kl": "k3 estimate of KL(π_old ‖ π_θ) during the update; > 0.1 means too big steps",
    "policy/clipfrac": "share of tokens whose ratio left [1-ε, 1+ε]; healthy: 0.0-0.2",
    "policy/entropy": "mean per-token entropy of π_θ on the response tokens (nats)",
    "value/clipfrac": "share of tokens whose value update was clipped",
    "value/explained_variance": "1 - Var(returns - V)/Var(returns) before the update; 1 is perfect, <= 0 is useless",
    "response/length": "mean response length in tokens (EOS included)",
    "response/eos_rate": "share of responses that ended with EOS within the budget",
    "response/distinct2": "distinct-2 of the batch's responses (diversity; falls under over-optimisation)",
    "time/rollout": "seconds spent sampling",
    "time/score": "seconds spent scoring (log-probs, reference, critic, reward model)",
    "time/update": "seconds spent in forward/backward/optimiser steps",
}
"""What every key of :func:`train_ppo`'s per-iteration stats means (like TRL's logged-metrics list)."""


# ----------------------------------------------------------------------------------------------
# KL: estimators and the exact per-token value
# ----------------------------------------------------------------------------------------------
def kl_estimators(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Schulman's three single-sample estimators of :math:`\\mathrm{KL}(\\pi\\Vert\\pi_{ref})` for :math:`y\\sim\\pi`.

    With :math:`\\rho = \\pi_{ref}(y)/\\pi(y)`, i.e. :math:`\\log\\rho` = ``ref_logprobs - logprobs``:

    - k1 :math:`= -\\log\\rho` (unbiased, can be negative, high variance);
    - k2 :math:`= \\tfrac12(\\log\\rho)^2` (biased, low variance, always >= 0);
    - k3 :math:`= (\\rho - 1) - \\log\\rho` (unbiased, always >= 0).

    Elementwise on tensors of any (equal) shape; returns ``{"k1", "k2", "k3"}``.
    Taught in chapter 7, "Estimating the KL".
    """
    if not isinstance(logprobs, torch.Tensor) or not isinstance(ref_logprobs, torch.Tensor):
        raise TypeError("logprobs and ref_logprobs must be tensors")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"ref_logprobs must have shape {tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}")
    log_rho = ref_logprobs - logprobs
    return {"k1": -log_rho, "k2": 0.5 * log_rho**2, "k3": torch.expm1(log_rho) - log_rho}


def exact_kl_per_token(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """The exact per-token KL at every position:

    .. math:: \\mathrm{KL}(\\pi(\\cdot\\mid s_t)\\Vert\\pi_{ref}(\\cdot\\mid s_t))
              = \\sum_v \\pi(v)\\log\\frac{\\pi(v)}{\\pi_{ref}(v)}.


    ``logits``, ``ref_logits`` ``(..., V)`` -> ``(...)``. The sum over the vocabulary is what the
    sampled estimators approximate with one token; :func:`rl4lmt.pg.exact_token_kl` sums it over a
    sequence. Taught in chapter 7, "Estimating the KL".
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"ref_logits must have shape {tuple(logits.shape)}, got {tuple(ref_logits.shape)}")
    logp = torch.log_softmax(logits.float(), -1)
    logq = torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


# ----------------------------------------------------------------------------------------------
# Rewards, GAE, whitening
# ----------------------------------------------------------------------------------------------
def _check_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.shape != like.shape:
        got = getattr(mask, "shape", type(mask))
        raise ValueError(f"mask must be a tensor of shape {tuple(like.shape)}, got {got}")
    return mask.to(device=like.device, dtype=like.dtype)


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (B, T) 0/1 mask (rows must hold at least one 1)."""
    if (mask.sum(-1) == 0).any():
        raise ValueError("mask must mark at least one response token in every row")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values


def kl_shaped_rewards(
    scores, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards :math:`r_t = -\\beta(\\log\\pi_{old}(y_t) - \\log\\pi_{ref}(y_t)) + [t = T_{last}]\\,R(x, y)`.

    The reward model judges the whole response, so its score ``scores[b]`` arrives once, at the
    last response token; every token pays the KL penalty (k1, the log-ratio of the sampled token)
    on the way (Ziegler et al. 2019; Ouyang et al. 2022). Summed over a response, the penalties
    give :math:`-\\beta\\log\\frac{\\pi(y)}{\\pi_{ref}(y)}`: the sequence-level objective.

    Args:
        scores: ``(B,)`` one score per response.
        logprobs, ref_logprobs: ``(B, T)`` log-probs of the sampled tokens under the policy that
            sampled them and under the reference.
        mask: ``(B, T)`` 1 on response tokens.
        kl_coef: β >= 0.

    Returns:
        ``(B, T)`` rewards, 0 off the response. Taught in chapter 7, "The token-level MDP".
    """
    mask = _check_mask(mask, logprobs)
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs must have shape {tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}")
    scores = torch.as_tensor(scores, dtype=logprobs.dtype, device=logprobs.device)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must have shape ({logprobs.shape[0]},), got {tuple(scores.shape)}")
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    rewards = -kl_coef * (logprobs - ref_logprobs).detach() * mask  # every token pays its KL
    last = _last_index(mask)  # the score arrives with the final token (EOS or truncation)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016), one backward pass.

    .. math:: \\delta_t = r_t + \\gamma V(s_{t+1}) - V(s_t),\\qquad
              \\hat A_t = \\delta_t + \\gamma\\lambda\\hat A_{t+1},\\qquad \\hat R_t = \\hat A_t + V(s_t).

    Each row's steps are the positions where ``mask`` is 1 (one contiguous block: the response).
    The step after the block is *terminal*: :math:`V(s_{T}) = 0` and :math:`\\hat A_{T} = 0`, whatever
    ``values`` holds at padding. In RLHF both EOS and truncation end the episode, because the
    reward model has already scored the response at its last token.

    Args:
        rewards, values, mask: ``(B, T)``.
        gamma, lam: in [0, 1].

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 off the mask, detached.
    Taught in chapter 7, "GAE".
    """
    mask = _check_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got {tuple(values.shape)}")
    for name, v in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    rewards, values = rewards.detach(), values.detach()
    T = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):  # backwards: A_t needs A_{t+1}
        live = mask[:, t]
        # past the response (padding) the next state is terminal: nothing carries back
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * live
        next_advantage = advantages[:, t]
        next_value = values[:, t] * live  # V(s_t) of a padding step is 0 (terminal)
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """:math:`(x - \\bar x)/\\sqrt{\\mathrm{Var}(x) + \\epsilon}` over the masked entries of the whole batch.

    Mean and variance run over *all* response tokens of all sequences (not per sequence, which
    would erase which response was better). ``shift_mean=False`` only rescales (used for rewards).
    Entries off the mask come back as 0. Taught in chapter 7, "Advantage whitening".
    """
    mask = _check_mask(mask, x)
    n = mask.sum()
    if n < 2:
        raise ValueError("mask must mark at least 2 entries to whiten")
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)  # unbiased, as torch.var
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None = 0.2
):
    """PPO's clipped value loss

    .. math:: \\tfrac12\\,\\mathrm{mean}_t\\max\\big((V - \\hat R)^2,\\
              (V_{old} + \\mathrm{clip}(V - V_{old}, -c, c) - \\hat R)^2\\big).

    Like the policy, the critic may move at most ``clip`` from the values it had when the
    rollouts were scored (OpenAI baselines; Huang et al. 2024); the max keeps the pessimistic
    term. ``clip=None`` gives the plain :math:`\\tfrac12(V - \\hat R)^2`. ``old_values`` and
    ``returns`` are detached targets. Returns ``(loss, info)`` with ``info["clipfrac"]``.
    Taught in chapter 7, "The critic".
    """
    mask = _check_mask(mask, values)
    for name, t in (("old_values", old_values), ("returns", returns)):
        if t.shape != values.shape:
            raise ValueError(f"{name} must have the shape of values {tuple(values.shape)}, got {tuple(t.shape)}")
    old_values, returns = old_values.detach(), returns.detach()
    n = mask.sum().clamp(min=1.0)
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * (unclipped * mask).sum() / n, {"clipfrac": 0.0}
    if not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * (torch.maximum(unclipped, clipped) * mask).sum() / n
    with torch.no_grad():
        clipfrac = ((clipped > unclipped).to(mask.dtype) * mask).sum() / n
    return loss, {"clipfrac": float(clipfrac)}


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1):
    """Direct preference optimisation (Rafailov et al. 2023):

    .. math:: L = -\\log\\sigma\\Big(\\beta\\log\\frac{\\pi_\\theta(y_w\\mid x)}{\\pi_{ref}(y_w\\mid x)}
              - \\beta\\log\\frac{\\pi_\\theta(y_l\\mid x)}{\\pi_{ref}(y_l\\mid x)}\\Big),

    the Bradley-Terry loss of the *implicit reward* :math:`\\hat r = \\beta\\log\\pi_\\theta/\\pi_{ref}`:
    at its optimum :math:`\\pi_\\theta \\propto \\pi_{ref}\\exp(r/\\beta)`, the RLHF optimum, reached
    without a reward model or sampling. All inputs ``(B,)`` sequence log-probs (summed over the
    response tokens). Returns ``(loss, info)``: the mean loss, and the implicit rewards'
    ``chosen_rewards``, ``rejected_rewards``, ``accuracy`` and ``margin`` (floats; TRL's metrics).
    Taught in chapter 7, "DPO".
    """
    tensors = [policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps]
    names = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(t).__name__}")
        if t.shape != policy_chosen_logps.shape:
            raise ValueError(f"{name} must have shape {tuple(policy_chosen_logps.shape)}, got {tuple(t.shape)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps.detach())  # implicit reward of y_w
    rejected = beta * (policy_rejected_logps - ref_rejected_logps.detach())  # ... and of y_l
    loss = -F.logsigmoid(chosen - rejected).mean()  # logsigmoid: stable for large margins
    with torch.no_grad():
        info = {
            "chosen_rewards": float(chosen.mean()),
            "rejected_rewards": float(rejected.mean()),
            "accuracy": float((chosen > rejected).float().mean()),
            "margin": float((chosen - rejected).mean()),
        }
    return loss, info


class AdaptiveKLController:
    """Ziegler et al. (2019)'s proportional controller for β.

    .. math:: e = \\mathrm{clip}\\big(\\tfrac{\\mathrm{KL}}{\\mathrm{KL}_{target}} - 1, -0.2, 0.2\\big),\\qquad
              \\beta \\leftarrow \\beta\\,(1 + e\\, n / H)

    after a batch of ``n`` samples with measured sequence KL; ``H`` is the horizon. Too much KL
    raises β, too little lowers it. Taught in chapter 7, "An adaptive KL coefficient".
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not init_kl_coef > 0 or not target > 0 or not horizon > 0:
            raise ValueError(
                f"init_kl_coef, target and horizon must be positive, got {init_kl_coef}, {target}, {horizon}"
            )
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))  # proportional, clipped
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ----------------------------------------------------------------------------------------------
# The critic: a value head on a copy of the reward model
# ----------------------------------------------------------------------------------------------
class Critic(nn.Module):
    """:math:`V_\\phi(s_t)` for every position of a sequence: a transformer backbone + a scalar head.

    ``Critic(reward_model)`` deep-copies a sequence-classification reward model (its backbone and
    its ``score`` head): the critic starts out predicting the reward model's score of the text so
    far, a good guess for the return (Ouyang et al. 2022 initialise the value function from the
    RM). ``Critic(lm)`` of a causal LM copies its backbone and adds a zero-initialised head
    (values start at 0). The model passed in is never modified.

    ``forward(input_ids, attention_mask) -> (B, T)``: the value of the state ending at each position.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        base = getattr(model, "base_model", None)
        if base is None or base is model:
            raise TypeError(f"model must be a transformers model with a backbone, got {type(model).__name__}")
        self.backbone = copy.deepcopy(base)
        if hasattr(model, "score") and model.score.out_features == 1:
            self.head = copy.deepcopy(model.score)  # the reward model's own head
        else:
            self.head = nn.Linear(model.config.hidden_size, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self.head(hidden).squeeze(-1).float()  # (B, T)


# ----------------------------------------------------------------------------------------------
# Rollouts through the package's own sampler
# ----------------------------------------------------------------------------------------------
class PPORollout(NamedTuple):
    """A batch of prompts with one sampled response each, laid out for teacher forcing.

    - ``input_ids`` ``(B, T)``: BOS, prompt, response (EOS included), right-padded;
    - ``attention_mask`` ``(B, T)``: 1 on every real token;
    - ``response_mask`` ``(B, T - 1)``: aligned with :func:`rl4lmt.lm.shifted_logprobs`: 1 where the
      *target* is a response token (the actions);
    - ``prompts``, ``responses``: the texts (responses without the EOS);
    - ``finished`` ``(B,)``: the response ended with EOS within the budget.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompts: list
    responses: list
    finished: torch.Tensor


@torch.no_grad()
def rollout(
    policy, tokenizer, prompts: Sequence[str], max_new_tokens: int, *, generator: torch.Generator | None = None
) -> PPORollout:
    """Sample one response per prompt with :func:`rl4lmt.decoding.sample` (temperature 1, no filters).

    Prompts of equal token length are sampled together (the sampler takes unpadded prompts),
    then every row is laid out as BOS + prompt + response + padding.
    """
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id: a response must be able to end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = model_device(policy)
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    rows: list = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for length, idx in sorted(by_length.items()):
        start = torch.tensor([encoded[i] for i in idx], dtype=torch.long, device=device)
        out = sample(policy, start, max_new_tokens, generator=generator, eos_token_id=eos, pad_token_id=pad)
        for k, i in enumerate(idx):
            resp = out[k, length:].tolist()
            if eos in resp:
                resp = resp[: resp.index(eos) + 1]  # up to and including the EOS
            rows[i] = (encoded[i], resp)
    width = max(len(p) + len(r) for p, r in rows)
    B = len(rows)
    input_ids = torch.full((B, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((B, width), dtype=torch.long)
    response_mask = torch.zeros((B, width - 1))
    finished = torch.zeros(B, dtype=torch.bool)
    responses = []
    for i, (p, r) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0  # target j is token j + 1
        finished[i] = bool(r) and r[-1] == eos
        words = r[:-1] if finished[i] else r
        responses.append(" ".join(tokenizer.convert_ids_to_tokens(words)))
    return PPORollout(
        input_ids.to(device), attention_mask.to(device), response_mask.to(device),
        list(prompts), responses, finished.to(device),
    )


def _logprobs_and_entropy(model, batch_ids, batch_mask):
    logits = model(input_ids=batch_ids, attention_mask=batch_mask).logits
    logp = shifted_logprobs(logits, batch_ids)  # (B, T-1)
    logp_all = torch.log_softmax(logits[:, :-1].float(), -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, T-1)
    return logp, entropy


def _scores(reward_fn, prompts, responses, device) -> torch.Tensor:
    values = np.asarray(reward_fn(list(prompts), list(responses)), dtype=np.float64)
    scores = torch.as_tensor(values, dtype=torch.float32)
    if scores.shape != (len(prompts),):
        raise ValueError(f"reward_fn must return one number per response ({len(prompts)}), got {tuple(scores.shape)}")
    return scores.to(device)


def _distinct2(responses) -> float:
    long_enough = [r for r in responses if len(r.split()) >= 2]
    return distinct_n(long_enough, 2) if long_enough else float("nan")


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------
def train_ppo(
    policy,
    ref,
    tokenizer,
    reward_fn: Callable[[list, list], Sequence[float]],
    prompts: Sequence[str],
    config: PPOConfig | None = None,
    *,
    critic: Critic | None = None,
    gold_fn: Callable[[list, list], Sequence[float]] | None = None,
    callback: Callable[[int, dict], bool | None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``policy`` in place with PPO on ``reward_fn``, leashed to ``ref``; return per-iteration stats.

    ``reward_fn(prompts, responses)`` and ``gold_fn`` (optional, only logged) return one number
    per response. ``critic`` defaults to ``Critic(policy)``; pass ``Critic(reward_model)`` to start
    the value head from the reward model. ``ref`` is only run under ``torch.no_grad()``.
    ``callback(iteration, stats)`` runs after every iteration (e.g. to evaluate); returning True
    stops training (e.g. at a wall-clock budget).
    Each iteration:

    1. draw ``batch_size`` prompts and sample a response to each (:func:`rollout`);
    2. score: old log-probs, reference log-probs, values, reward-model scores;
    3. per-token rewards (:func:`kl_shaped_rewards`), advantages and returns (:func:`gae`),
       whitened advantages (:func:`whiten`);
    4. ``ppo_epochs`` passes over shuffled minibatches: clipped surrogate + ``vf_coef`` x clipped
       value loss (- ``entropy_coef`` x entropy), one Adam step each;
    5. adapt β (if ``target_kl``).

    Returns a list of dicts, one per iteration, keyed as in :data:`STATS_GLOSSARY`.
    Taught in chapter 7, "PPO end to end".
    """
    from tqdm.auto import tqdm

    cfg = config or PPOConfig()
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"config must be a PPOConfig, got {type(cfg).__name__}")
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if not callable(reward_fn):
        raise TypeError("reward_fn must be callable: (prompts, responses) -> scores")
    device = model_device(policy)
    critic = Critic(policy) if critic is None else critic
    critic.to(device)
    for m in (policy, ref, critic):
        m.eval()  # detail 2: no dropout, so sampling and training see the same function
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(
        [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
         {"params": [p for p in critic.parameters() if p.requires_grad], "lr": cfg.critic_lr}],
        eps=1e-5,
    )
    prompts = list(prompts)

    def draw_prompts():
        idx = torch.randint(len(prompts), (cfg.batch_size,), generator=gen).tolist()
        return [prompts[i] for i in idx]

    # detail 4: gain and bias so that the initial policy's scores have mean 0 and std 1
    score_mean, score_std = 0.0, 1.0
    if cfg.normalize_reward:
        init = rollout(policy, tokenizer, draw_prompts(), cfg.max_new_tokens, generator=sample_gen)
        s = _scores(reward_fn, init.prompts, init.responses, device)
        score_mean, score_std = float(s.mean()), float(s.std().clamp(min=1e-6))
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl else None
    beta = cfg.kl_coef
    history = []
    bar = tqdm(range(cfg.iterations), disable=not progress, desc=f"PPO beta={cfg.kl_coef}", mininterval=1.0)
    for _ in bar:
        # 1. rollouts (detail 1: the package's sampler, the exact policy being trained)
        t0 = time.perf_counter()
        roll = rollout(policy, tokenizer, draw_prompts(), cfg.max_new_tokens, generator=sample_gen)
        mask = roll.response_mask
        t1 = time.perf_counter()

        # 2. score the rollouts once; everything here is a fixed number during the update
        with torch.no_grad():
            old_logp, _ = _logprobs_and_entropy(policy, roll.input_ids, roll.attention_mask)  # detail 3
            ref_logp, _ = _logprobs_and_entropy(ref, roll.input_ids, roll.attention_mask)
            old_values = critic(roll.input_ids, roll.attention_mask)[:, :-1]  # V(s_t): state before target t+1
            raw = _scores(reward_fn, roll.prompts, roll.responses, device)
            scores = (raw - score_mean) / score_std
            if cfg.missing_eos_penalty is not None:  # detail 5: an unfinished response is not a review
                scores = torch.where(roll.finished, scores, torch.full_like(scores, cfg.missing_eos_penalty))
            old_logp, ref_logp, old_values = old_logp * mask, ref_logp * mask, old_values * mask
            # 3. detail 6: per-token KL penalty, score at the last token; detail 9: GAE
            rewards = kl_shaped_rewards(scores, old_logp, ref_logp, mask, beta)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask)  # detail 10: over the whole batch
            seq_kl = ((old_logp - ref_logp) * mask).sum(-1)
            var_ret = returns[mask.bool()].var()
            explained_var = 1.0 - (returns - old_values)[mask.bool()].var() / var_ret if var_ret > 0 else float("nan")
        t2 = time.perf_counter()

        # 4. detail 11: several epochs over minibatches of the same rollouts
        sums = {"loss/policy": 0.0, "loss/value": 0.0, "policy/approx_kl": 0.0, "policy/clipfrac": 0.0,
                "policy/entropy": 0.0, "value/clipfrac": 0.0}
        n_updates = 0
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=gen).tolist()
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = order[start : start + cfg.minibatch_size]
                ids, att, m = roll.input_ids[mb], roll.attention_mask[mb], mask[mb]
                logp, entropy = _logprobs_and_entropy(policy, ids, att)
                values = critic(ids, att)[:, :-1]
                # detail 12: the clipped surrogate (chapter 4's) and the clipped value loss
                pg_loss, pg_info = ppo_clip_loss(logp, old_logp[mb], advantages[mb], cfg.clip_eps, mask=m)
                vf_loss, vf_info = clipped_value_loss(values, old_values[mb], returns[mb], m, cfg.clip_value)
                mean_entropy = (entropy * m).sum() / m.sum()
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * mean_entropy
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:  # detail 13
                    nn.utils.clip_grad_norm_(list(policy.parameters()) + list(critic.parameters()), cfg.max_grad_norm)
                optimizer.step()
                sums["loss/policy"] += pg_loss.item()
                sums["loss/value"] += vf_loss.item()
                sums["policy/approx_kl"] += pg_info["approx_kl"]
                sums["policy/clipfrac"] += pg_info["clipfrac"]
                sums["policy/entropy"] += mean_entropy.item()
                sums["value/clipfrac"] += vf_info["clipfrac"]
                n_updates += 1
        t3 = time.perf_counter()

        stats = {k: v / n_updates for k, v in sums.items()}
        stats.update({
            "reward/proxy": float(raw.mean()),
            "reward/shaped": float(rewards.sum(-1).mean()),
            "kl/ref": float(seq_kl.mean()),
            "kl/coef": beta,
            "value/explained_variance": float(explained_var),
            "response/length": float(mask.sum(-1).mean()),
            "response/eos_rate": float(roll.finished.float().mean()),
            "response/distinct2": _distinct2(roll.responses),
            "time/rollout": t1 - t0,
            "time/score": t2 - t1,
            "time/update": t3 - t2,
        })
        if gold_fn is not None:
            stats["reward/gold"] = float(_scores(gold_fn, roll.prompts, roll.responses, "cpu").mean())
        if kl_ctl is not None:  # 5. detail 7: move β toward the target KL
            beta = kl_ctl.update(stats["kl/ref"], cfg.batch_size)
        history.append(stats)
        bar.set_postfix(proxy=f"{stats['reward/proxy']:.2f}", kl=f"{stats['kl/ref']:.2f}", refresh=False)
        if callback is not None and callback(len(history) - 1, stats):
            break
    return history


# ----------------------------------------------------------------------------------------------
# The chapter's task: instructions, the shipped reward model as proxy, the world as gold
# ----------------------------------------------------------------------------------------------
class RLHFTask(NamedTuple):
    """Everything a chapter-7 run needs: models, prompts, the proxy reward and the gold reward."""

    policy: nn.Module
    ref: nn.Module
    tokenizer: object
    reward_model: nn.Module
    prompts: list
    eval_prompts: list
    reward_fn: Callable
    gold_fn: Callable


def load_task(n_prompts: int = 256, n_eval: int = 64, *, device=None, seed: int = 0) -> RLHFTask:
    """The RLHF task of chapter 7: :data:`POLICY` (trained copy and frozen reference), the reward
    model :data:`REWARD_MODEL` as the proxy reward ``reward_fn(prompts, responses)`` (its score of
    ``<bos> prompt response <eos>``, :func:`rl4lmt.reward.score`), and the world's gold reward
    ``gold_fn`` = ``TinyReviews.instruction_score`` (in [0, 1]); prompts are world instructions
    ("write a positive review about the music :"), ``n_prompts`` for training and ``n_eval`` other
    ones for evaluation, drawn with ``seed``.
    """
    from rl4lmt import reward, zoo
    from rl4lmt.world import TinyReviews

    world = TinyReviews()
    policy, tokenizer = zoo.load(POLICY, device=device)
    ref = copy.deepcopy(policy).eval()
    rm, _ = zoo.load(REWARD_MODEL, device=device)
    instructions = [x for x, _ in world.instructions(n_prompts + n_eval, seed=seed)]

    def reward_fn(prompts, responses):
        return reward.score(rm, tokenizer, prompts, responses).tolist()

    def gold_fn(prompts, responses):
        return [world.instruction_score(x, y) for x, y in zip(prompts, responses)]

    return RLHFTask(policy, ref, tokenizer, rm, instructions[:n_prompts], instructions[n_prompts:], reward_fn, gold_fn)
