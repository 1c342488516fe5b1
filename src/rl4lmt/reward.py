"""Reward modelling: preferences, the Bradley-Terry loss, evaluation, best-of-n (taught in chapter 6).

RLHF's step 2 (Ouyang et al., 2022): sample K responses to each instruction from the SFT policy,
let annotators rank them, and fit a scalar reward :math:`r_\\phi(x, y)` to the rankings with the
Bradley-Terry model (Bradley and Terry, 1952)

.. math::  P(y_w \\succ y_l \\mid x) = \\sigma(r(x, y_w) - r(x, y_l)),
           \\qquad \\mathcal L(\\phi) = -\\mathbb E\\,[\\log\\sigma(r_\\phi(x, y_w) - r_\\phi(x, y_l))].

The TinyReviews world knows what real courses cannot: the *gold* utility of a response
(``TinyReviews.instruction_score``: how surely the world would have written it for the
instruction), and the annotators' exact noise and bias (:class:`Annotators`). So the page can say
how good a reward model is, how good it *could* be (:func:`bayes_ceiling`), and what it learned
that the annotators did not mean (their taste for length).

Implementation details, each a function here:

1. responses are sampled with :func:`rl4lmt.decoding.sample` (pure ancestral sampling, the
   policy's own distribution), ``K`` per instruction (:func:`sample_responses`);
2. annotators rank the K responses by Plackett-Luce around their utility (gold + length taste),
   so every pair inside a ranking follows Bradley-Terry exactly; careless annotators give a random
   ranking (:meth:`Annotators.rank`); a ranking becomes its C(K, 2) pairs (:func:`ranking_pairs`);
3. the data is TRL's explicit-prompt preference format (``prompt``/``chosen``/``rejected``,
   completions end with the EOS so the reward is read at the end of the response);
4. the score of a padded sequence is read at its last real token (:func:`last_token_scores`,
   what ``GPT2ForSequenceClassification`` does);
5. the loss is ``-logsigmoid(r_w - r_l)`` (:func:`bradley_terry_loss`, equal to TRL
   ``RewardTrainer``'s), never ``log(sigmoid(.))``, which underflows to ``-inf``;
6. the shipped reward model is trained with TRL's ``RewardTrainer`` (:func:`train`);
7. best-of-n: keep the highest-scored of n samples (:func:`best_of_n`); its KL to the sampler is
   at most ``log n - (n - 1)/n`` (:func:`best_of_n_kl`, Stiennon et al., 2020; Beirami et al.,
   2024), checked by :func:`best_of_n_kl_monte_carlo` with the world's exact probabilities;
8. a Bradley-Terry reward is identified only up to a constant per prompt, so its correlation with
   gold is judged within prompts (:func:`within_prompt_correlation`, in :func:`evaluate`);
9. outcome vs process supervision (Lightman et al., 2023): a step model scores every word, trained
   on the world's exact posterior after each prefix (:func:`process_labels`) or on the final gold
   only (:func:`step_label_batch`), with :func:`step_label_loss`; a share of its training
   responses answers another request (:func:`off_task_instructions`), or it would never read the
   instruction; :func:`aggregate_steps` turns step scores into one (min, product, last).
   ``benchmarks/reward_process.py`` compares them.

Rebuild the shipped reward models (same seed, same weights)::

    python -m rl4lmt.reward train            # or: make reward-model
    python -m rl4lmt.reward train-prm        # or: make process-reward-model
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rl4lmt.utils import model_device
from rl4lmt.world import TinyReviews

__all__ = [
    "POLICY", "Annotators", "gold_utility", "sample_responses", "ranking_pairs", "preference_data",
    "bradley_terry_loss", "kwise_bradley_terry_loss", "last_token_scores", "reward_model_from_lm",
    "score", "pairwise_accuracy", "bayes_ceiling", "within_prompt_correlation", "best_of_n", "best_of_n_kl",
    "best_of_n_expectation", "best_of_n_kl_monte_carlo", "RewardModelConfig", "fit", "train",
    "recipe_data", "train_bradley_terry", "evaluate",
]

#: The policy whose responses the annotators compare, and the reward model's initialisation:
#: RLHF's SFT model (chapter 5). The one place to change it.
POLICY = "tiny-reviews-sft"


# ----------------------------------------------------------------------------------------------
# 1. Gold utility and simulated annotators
# ----------------------------------------------------------------------------------------------
def gold_utility(world: TinyReviews, instruction: str, response: str) -> float:
    """The gold utility :math:`u^*(x, y)` of a response: ``world.instruction_score(x, y)`` in [0, 1].

    The posterior probability that the world wrote ``y`` under the latents the instruction asks
    for (sentiment and topic); 0 for a text the world cannot produce (ungrammatical, unfinished).
    It is what the instruction *means*; annotators see it only through noise and their own taste.

    Taught in chapter 6, "Preferences over the policy's own responses".
    """
    return world.instruction_score(instruction, response)


@dataclass
class Annotators:
    """Simulated annotators: Bradley-Terry around the gold utility, with noise and a taste for length.

    The annotators' utility of a response with :math:`|y|` words is
    :math:`u(x, y) = u^*(x, y) + \\lambda |y|`, and for two responses

    .. math::  P(y_1 \\succ y_2) = (1 - \\epsilon)\\,\\sigma(\\beta (u_1 - u_2))
               + \\epsilon\\,\\sigma(\\beta (u_2 - u_1)),

    i.e. Bradley-Terry with inverse temperature :math:`\\beta`, then each recorded comparison is
    flipped with probability :math:`\\epsilon` (careless annotators).
    """

    beta: float = 10.0
    """Inverse temperature :math:`\\beta`: how sharply annotators tell utilities apart (0: coin flips)."""
    noise: float = 0.1
    """Label noise :math:`\\epsilon` in [0, 0.5]: the probability that a comparison is flipped."""
    length_bias: float = 0.02
    """:math:`\\lambda`: utility per word that annotators add for length (what the instruction did not ask)."""

    def __post_init__(self):
        for name in ("beta", "noise", "length_bias"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {self.noise}")

    def utility(self, gold, n_words) -> np.ndarray:
        """The annotators' utility :math:`u^* + \\lambda |y|` (arrays broadcast)."""
        return np.asarray(gold, dtype=np.float64) + self.length_bias * np.asarray(n_words, dtype=np.float64)

    def prob_prefer(self, u_first, u_second) -> np.ndarray:
        """:math:`P(\\text{first} \\succ \\text{second})` from the annotators' utilities, noise included (exact)."""
        p = 1.0 / (1.0 + np.exp(-self.beta * (np.asarray(u_first, np.float64) - np.asarray(u_second, np.float64))))
        return (1 - self.noise) * p + self.noise * (1 - p)

    def rank(self, utilities, rng: np.random.Generator) -> np.ndarray:
        """Rank K responses, best first: a Plackett-Luce draw around :math:`\\beta u`, or at random.

        Plackett-Luce by the Gumbel trick: sort :math:`\\beta u_i + G_i`, :math:`G_i` standard Gumbel.
        The order of any two responses in such a ranking is Bradley-Terry,
        :math:`\\sigma(\\beta(u_i - u_j))` (Luce's choice axiom). With probability :math:`2\\epsilon`
        the annotator is careless and ranks uniformly at random, which flips each pair with
        probability exactly :math:`\\epsilon`: the pair marginal is :meth:`prob_prefer`.
        """
        u = np.asarray(utilities, dtype=np.float64)
        if u.ndim != 1 or u.size < 2:
            raise ValueError(f"utilities must be a 1-D array of K >= 2 utilities, got shape {u.shape}")
        careless = rng.random() < 2 * self.noise
        keys = rng.gumbel(size=u.size) + (0.0 if careless else self.beta * u)
        return np.argsort(-keys, kind="stable")


def ranking_pairs(ranking) -> list[tuple[int, int]]:
    """A ranking (indices, best first) as its C(K, 2) pairs ``(winner, loser)``.

    >>> ranking_pairs([2, 0, 1])
    [(2, 0), (2, 1), (0, 1)]

    Taught in chapter 6, "The Bradley-Terry model".
    """
    ranking = [int(i) for i in ranking]
    if len(set(ranking)) != len(ranking) or len(ranking) < 2:
        raise ValueError(f"ranking must list K >= 2 distinct indices, got {ranking}")
    return list(combinations(ranking, 2))


# ----------------------------------------------------------------------------------------------
# 2. Preference data over the policy's own responses
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_responses(policy, tokenizer, instructions, k: int, *, max_new_tokens: int = 40,
                     batch_rows: int = 256, generator: torch.Generator | None = None) -> list[list[str]]:
    """``k`` responses of the policy to each instruction, sampled with :func:`rl4lmt.decoding.sample`.

    The policy sees ``<bos> instruction`` and samples until its EOS (pure ancestral sampling:
    the responses come from exactly the policy that will be optimised). A response is its words
    without the EOS; one that hits ``max_new_tokens`` or samples a special token is cut there (it
    is unfinished, and the world scores it 0). Instructions of the same length share batches.

    Returns one list of ``k`` response strings per instruction, in order.

    Taught in chapter 6, "Preferences over the policy's own responses".
    """
    from rl4lmt.decoding import sample

    if isinstance(instructions, str):
        raise TypeError("instructions must be a list of strings, not a single string")
    instructions = list(instructions)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    device = model_device(policy)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    special = set(tokenizer.all_special_ids)
    encoded = [list(tokenizer(x)["input_ids"]) for x in instructions]
    out: list[list[str]] = [[] for _ in instructions]
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for length in sorted(by_len):
        rows = [i for i in by_len[length] for _ in range(k)]  # each instruction k times
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start:start + batch_rows]
            prompt = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            ids = sample(policy, prompt, max_new_tokens, generator=generator, eos_token_id=eos, pad_token_id=pad)
            for i, row in zip(chunk, ids[:, length:].tolist()):
                words = []
                for t in row:
                    if t in special:  # EOS ends the response; pad/unk cut it (unfinished)
                        break
                    words.append(tokenizer.convert_ids_to_tokens(t))
                out[i].append(" ".join(words))
    return out


def preference_data(policy, tokenizer, world: TinyReviews, n_prompts: int, *, k: int = 4,
                    annotators: Annotators | None = None, max_new_tokens: int = 40, seed: int = 0):
    """Preference pairs over the policy's own responses, as InstructGPT collects them.

    1. ``n_prompts`` instructions from ``world.instructions`` (the SFT task);
    2. ``k`` responses each from the policy (:func:`sample_responses`);
    3. one annotator ranking per instruction (:meth:`Annotators.rank`), expanded to its C(k, 2)
       pairs (:func:`ranking_pairs`; identical responses are not compared).

    Returns a ``datasets.Dataset`` in TRL's explicit-prompt preference format: ``prompt`` (the
    instruction), ``chosen`` and ``rejected`` (``" " + response + " <eos>"``: TRL joins prompt and
    completion as strings and would glue its own EOS to the last word), plus the truth for
    evaluation: ``prompt_id``, ``gold_chosen``/``gold_rejected`` (:func:`gold_utility`),
    ``len_chosen``/``len_rejected`` (words) and ``p_chosen`` (the annotators' exact probability of
    preferring the chosen one, :meth:`Annotators.prob_prefer`).

    Taught in chapter 6, "Preferences over the policy's own responses".
    """
    from datasets import Dataset

    annotators = annotators or Annotators()
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be an int >= 1, got {n_prompts!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2 (a ranking compares responses), got {k!r}")
    instructions = [x for x, _ in world.instructions(n_prompts, seed=seed)]
    gen = torch.Generator(device=model_device(policy)).manual_seed(seed)
    responses = sample_responses(policy, tokenizer, instructions, k, max_new_tokens=max_new_tokens, generator=gen)
    rng = np.random.default_rng(seed)
    eos = tokenizer.eos_token
    rows = {c: [] for c in ("prompt", "chosen", "rejected", "prompt_id", "gold_chosen", "gold_rejected",
                            "len_chosen", "len_rejected", "p_chosen")}
    for pid, (x, ys) in enumerate(zip(instructions, responses)):
        gold = np.array([gold_utility(world, x, y) for y in ys])
        lens = np.array([len(y.split()) for y in ys])
        u = annotators.utility(gold, lens)
        for w, lo in ranking_pairs(annotators.rank(u, rng)):
            if ys[w] == ys[lo]:
                continue  # no preference between identical responses
            rows["prompt"].append(x)
            rows["chosen"].append(f" {ys[w]} {eos}")
            rows["rejected"].append(f" {ys[lo]} {eos}")
            rows["prompt_id"].append(pid)
            rows["gold_chosen"].append(float(gold[w]))
            rows["gold_rejected"].append(float(gold[lo]))
            rows["len_chosen"].append(int(lens[w]))
            rows["len_rejected"].append(int(lens[lo]))
            rows["p_chosen"].append(float(annotators.prob_prefer(u[w], u[lo])))
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------------------------
# 3. The Bradley-Terry loss and the score of a padded batch
# ----------------------------------------------------------------------------------------------
def _as_scores(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The Bradley-Terry loss :math:`-\\frac1B\\sum_i \\log\\sigma(r(x_i, y_{w,i}) - r(x_i, y_{l,i}))`.

    ``logsigmoid`` is computed stably for any margin (``log(sigmoid(-200.))`` is ``-inf`` in
    float32; ``logsigmoid(-200.)`` is ``-200``). Same value as TRL ``RewardTrainer.compute_loss``.

    Args:
        r_chosen, r_rejected: scores of the preferred and the other response, shape ``(B,)``.

    Returns:
        ``(loss, info)``: the scalar loss and ``{"accuracy": share of pairs with r_w > r_l (ties
        are not wins), "margin": mean r_w - r_l}``, computed without gradients.

    Taught in chapter 6, "The Bradley-Terry model".
    """
    _as_scores(r_chosen, "r_chosen")
    _as_scores(r_rejected, "r_rejected")
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1 or r_chosen.numel() == 0:
        raise ValueError(f"r_chosen and r_rejected must be non-empty (B,) tensors of one shape, "
                         f"got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    margin = r_chosen - r_rejected  # (B,)
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        info = {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean())}
    return loss, info


def kwise_bradley_terry_loss(scores: torch.Tensor, rankings) -> torch.Tensor:
    """InstructGPT's loss for K-wise rankings: every C(K, 2) pair of a prompt, in one batch element.

    :math:`-\\frac{1}{P}\\sum_p \\binom{K}{2}^{-1} \\sum_{(w, l)} \\log\\sigma(r_{p,w} - r_{p,l})`:
    each response is scored once (``scores`` ``(P, K)``), and all pairs of one prompt weigh as
    one example, so the K responses of a prompt do not count C(K, 2) times (Ouyang et al., 2022).
    ``rankings`` ``(P, K)``: response indices per prompt, best first.

    Taught in chapter 6, "The Bradley-Terry model".
    """
    _as_scores(scores, "scores")
    rankings = torch.as_tensor(rankings, dtype=torch.long, device=scores.device)
    if scores.dim() != 2 or rankings.shape != scores.shape or scores.shape[1] < 2:
        raise ValueError(f"scores and rankings must both be (P, K) with K >= 2, got {tuple(scores.shape)} "
                         f"and {tuple(rankings.shape)}")
    ranked = scores.gather(1, rankings)  # (P, K): best first
    win, lose = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1, device=scores.device)  # i < j
    return -F.logsigmoid(ranked[:, win] - ranked[:, lose]).mean()


def last_token_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Read per-position values ``(B, T)`` at each row's last real token: ``(B,)``.

    A causal model's value at position t has seen tokens 1..t only, so the whole response is
    seen at its last token; with right padding that is at index ``attention_mask.sum(1) - 1``,
    not at ``-1`` (a pad position). The index of the last 1 in the mask is used, so left padding
    works too. ``GPT2ForSequenceClassification`` does the same with ``config.pad_token_id``.

    Taught in chapter 6, "The Bradley-Terry model".
    """
    _as_scores(values, "values")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != values.shape:
        raise ValueError(f"attention_mask must be a tensor of the values' shape {tuple(values.shape)}")
    mask = attention_mask.to(values.device).bool()
    if not mask.any(1).all():
        raise ValueError("attention_mask has a row without any real token")
    positions = torch.arange(values.shape[1], device=values.device)
    last = torch.where(mask, positions, -1).max(1).values  # (B,) index of the last real token
    return values.gather(1, last[:, None]).squeeze(1)


def reward_model_from_lm(name: str = POLICY, *, seed: int = 0, device=None):
    """A reward model initialised from a causal LM: ``(GPT2ForSequenceClassification, tokenizer)``.

    The transformer's weights come from the LM (``rl4lmt.zoo`` name); the LM head is dropped and a
    fresh linear head ``score`` (``num_labels=1``, no bias) is drawn with ``seed``.
    ``config.pad_token_id`` is set so that the model reads the score at the last non-pad token.

    Taught in chapter 6, "The Bradley-Terry model".
    """
    from transformers import GPT2ForSequenceClassification

    return _scalar_head_model(GPT2ForSequenceClassification, name, seed, device, pad_token_id=True)


def _scalar_head_model(model_class, name: str, seed: int, device, pad_token_id: bool = False, **config):
    """``model_class`` (a GPT-2 with a fresh ``num_labels=1`` head) on the LM ``name``'s transformer.

    The head is drawn with ``seed`` and the caller's RNG is restored; ``config`` updates the LM's
    config first; ``pad_token_id`` sets the tokenizer's pad id in the config.
    """
    from rl4lmt import zoo
    from rl4lmt.utils import get_device

    lm, tokenizer = zoo.load(name, device="cpu")
    lm.config.num_labels = 1
    if pad_token_id:
        lm.config.pad_token_id = tokenizer.pad_token_id
    for key, value in config.items():
        setattr(lm.config, key, value)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the fresh head is the only random part; restore the caller's RNG after
    try:
        model = model_class(lm.config)
    finally:
        torch.random.set_rng_state(gen_state)
    model.transformer.load_state_dict(lm.transformer.state_dict())  # strict: every weight is the LM's
    device = get_device() if device is None else torch.device(device)
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def score(rm, tokenizer, prompts, responses, *, batch_size: int = 256) -> torch.Tensor:
    """Reward-model scores :math:`r(x, y)` of (prompt, response) pairs, ``(N,)`` float32 on the CPU.

    Each pair is read as TRL's reward data is: ``<bos> prompt response <eos>``, right-padded; the
    score is the sequence-classification logit at the last real token (the EOS).

    Taught in chapter 6, "The shipped reward model".
    """
    from rl4lmt.utils import check_texts

    prompts, responses = check_texts(prompts), check_texts(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have one length, got {len(prompts)} and {len(responses)}")
    device = model_device(rm)
    texts = [f"{x} {y} {tokenizer.eos_token}" for x, y in zip(prompts, responses)]
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt")
        logits = rm(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
        out.append(logits[:, 0].float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# 4. Evaluation: accuracy, the Bayes ceiling
# ----------------------------------------------------------------------------------------------
def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """Share of pairs the reward model orders as the labels do: :math:`\\frac1B\\sum_i [r_{w,i} > r_{l,i}]`.

    A tie is not a win (a constant reward model scores 0, not 1). Arrays or tensors ``(B,)``.

    Taught in chapter 6, "The shipped reward model".
    """
    rc = np.asarray(r_chosen.detach().cpu() if isinstance(r_chosen, torch.Tensor) else r_chosen, np.float64)
    rr = np.asarray(r_rejected.detach().cpu() if isinstance(r_rejected, torch.Tensor) else r_rejected, np.float64)
    if rc.shape != rr.shape or rc.ndim != 1 or rc.size == 0:
        raise ValueError(f"r_chosen and r_rejected must be non-empty 1-D arrays of one shape, "
                         f"got {rc.shape} and {rr.shape}")
    return float(np.mean(rc > rr))


def bayes_ceiling(p_chosen) -> float:
    """The best pairwise accuracy any reward model can expect: :math:`\\frac1B\\sum_i \\max(p_i, 1 - p_i)`.

    ``p_chosen[i]`` is the annotators' probability of the recorded label (:meth:`Annotators.prob_prefer`);
    the Bayes classifier predicts the likelier label of each pair, and is right with probability
    :math:`\\max(p_i, 1 - p_i)` whatever label was drawn. Exact given the pairs, from the annotator model.

    Taught in chapter 6, "The shipped reward model".
    """
    p = np.asarray(p_chosen, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any((p < 0) | (p > 1)):
        raise ValueError("p_chosen must be a non-empty 1-D array of probabilities")
    return float(np.mean(np.maximum(p, 1 - p)))


def within_prompt_correlation(groups, x, y) -> float:
    """Pearson correlation of ``x`` and ``y`` after removing each group's mean from both.

    A Bradley-Terry reward is identified only up to a constant per prompt: adding :math:`c(x)` to
    :math:`r(x, y)` changes no :math:`r(x, y_w) - r(x, y_l)`, so no loss and no label can fix
    it. A correlation with gold pooled over prompts mixes these arbitrary offsets in; this one
    compares responses to the *same* prompt only (the fixed-effects correlation), and is
    unchanged by any per-group shift of ``x`` or ``y``. Groups with one member carry no
    within-group variation and drop out.

    Taught in chapter 6, "The shipped reward model".
    """
    keys = [str(k) for k in groups]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (len(keys) == x.size == y.size) or x.ndim != 1 or y.ndim != 1 or x.size == 0:
        raise ValueError(f"groups, x and y must be non-empty and of one length, got {len(keys)}, {x.size}, {y.size}")
    _, g = np.unique(np.array(keys), return_inverse=True)
    count = np.bincount(g)
    dx = x - (np.bincount(g, x) / count)[g]
    dy = y - (np.bincount(g, y) / count)[g]
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        raise ValueError("x or y does not vary within any group: the within-group correlation is undefined")
    return float(dx @ dy) / denom


def evaluate(rm, tokenizer, data) -> dict:
    """Evaluate a reward model on held-out preference data from :func:`preference_data`.

    Returns ``accuracy`` (against the annotators' labels), ``ceiling`` (:func:`bayes_ceiling`),
    ``gold_accuracy`` (ordering pairs as the gold utility does; gold ties left out),
    ``annotator_gold_accuracy`` (the labels themselves against gold), ``pearson``/``spearman``
    (RM score against gold utility, pooled over the distinct responses of all prompts),
    ``pearson_within`` (the same within prompts, :func:`within_prompt_correlation`: the one a
    Bradley-Terry reward can be judged on, since its per-prompt offset is arbitrary), and the
    length slopes: the least-squares slope per word of the RM score and of the gold utility,
    ``rm_length_corr`` and ``gold_length_corr``.

    Taught in chapter 6, "The shipped reward model".
    """
    from scipy import stats

    rc = score(rm, tokenizer, data["prompt"], [c[: -len(tokenizer.eos_token)].strip() for c in data["chosen"]])
    rr = score(rm, tokenizer, data["prompt"], [c[: -len(tokenizer.eos_token)].strip() for c in data["rejected"]])
    gc, gr = np.asarray(data["gold_chosen"]), np.asarray(data["gold_rejected"])
    lc, lr_ = np.asarray(data["len_chosen"]), np.asarray(data["len_rejected"])
    differ = gc != gr
    # one row per distinct (prompt, response) for correlations
    seen, xs, s, g, n = set(), [], [], [], []
    for i, (x, c, r) in enumerate(zip(data["prompt"], data["chosen"], data["rejected"])):
        for text, sc, gd, ln in ((c, rc[i], gc[i], lc[i]), (r, rr[i], gr[i], lr_[i])):
            if (x, text) not in seen:
                seen.add((x, text))
                xs.append(x), s.append(float(sc)), g.append(float(gd)), n.append(int(ln))
    s, g, n = np.array(s), np.array(g), np.array(n)
    return {
        "n_pairs": len(gc),
        "accuracy": pairwise_accuracy(rc, rr),
        "ceiling": bayes_ceiling(data["p_chosen"]),
        "gold_accuracy": float(np.mean(np.where(gc > gr, rc.numpy() > rr.numpy(), rr.numpy() > rc.numpy())[differ])),
        "annotator_gold_accuracy": float(np.mean((gc > gr)[differ])),
        "pearson": float(stats.pearsonr(s, g)[0]),
        "spearman": float(stats.spearmanr(s, g)[0]),
        "pearson_within": within_prompt_correlation(xs, s, g),
        "rm_length_slope": float(np.polyfit(n, s, 1)[0]),
        "gold_length_slope": float(np.polyfit(n, g, 1)[0]),
        "rm_length_corr": float(stats.pearsonr(n, s)[0]),
        "gold_length_corr": float(stats.pearsonr(n, g)[0]),
    }


# ----------------------------------------------------------------------------------------------
# 5. Best-of-n
# ----------------------------------------------------------------------------------------------
def best_of_n(scores) -> torch.Tensor:
    """Index of the best of ``n`` candidates per row: ``argmax`` over the last axis of ``(M, n)`` scores.

    Ties go to the first candidate. The simplest policy improvement with a reward model: sample
    n responses, keep the one the reward model likes most.

    Taught in chapter 6, "Best-of-n, and the first Goodhart curve".
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (M, n) with n >= 1, got shape {tuple(scores.shape)}")
    return scores.argmax(dim=1)


def best_of_n_kl(n: int) -> float:
    """:math:`\\mathrm{KL}(\\pi_{\\mathrm{BoN}} \\Vert \\pi) = \\log n - \\frac{n - 1}{n}` (nats).

    Exact when the ranking score is continuous under :math:`\\pi` (no ties, every single response
    improbable), an upper bound otherwise (Beirami et al., 2024). The x-axis of Gao et al.'s
    (2022) over-optimisation curves: best-of-n buys reward with little KL (log n grows slowly).

    Taught in chapter 6, "Best-of-n, and the first Goodhart curve".
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy, values, n: int) -> np.ndarray:
    """Expected ``values`` of the best-of-``n`` (by ``proxy``) among N >= n samples, per row ``(M,)``.

    The unbiased estimator of Gao et al. (2022, appendix): with a row's N samples sorted by proxy,
    a random n-subset's best is the i-th smallest with probability :math:`\\binom{i-1}{n-1}/\\binom{N}{n}`,
    so every n-subset of the N samples is averaged over exactly, without resampling.

    Taught in chapter 6, "Best-of-n, and the first Goodhart curve".
    """
    proxy, values = np.asarray(proxy, np.float64), np.asarray(values, np.float64)
    if proxy.shape != values.shape or proxy.ndim != 2:
        raise ValueError(f"proxy and values must both be (M, N), got {proxy.shape} and {values.shape}")
    N = proxy.shape[1]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= N:
        raise ValueError(f"n must be an int in [1, N={N}], got {n!r}")
    order = np.argsort(proxy, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)  # ascending proxy
    i = np.arange(1, N + 1)
    # log C(i-1, n-1) - log C(N, n), 0 weight where i < n
    with np.errstate(divide="ignore"):
        logw = np.where(i >= n, _log_comb(i - 1, n - 1) - _log_comb(N, n), -np.inf)
    w = np.exp(logw)
    return v @ w


def _log_comb(a, b):
    from scipy.special import gammaln

    a = np.asarray(a, np.float64)
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(np.maximum(a - b, 0) + 1)


def best_of_n_kl_monte_carlo(world: TinyReviews, utility, n: int, *, n_reference: int = 4000,
                             n_draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo :math:`\\mathrm{KL}(\\pi_{\\mathrm{BoN}} \\Vert \\pi)` for best-of-n over world reviews.

    Candidates are ordered totally by ``(utility(text), text)``; then the best of n is ``y``
    with probability :math:`\\pi_{\\mathrm{BoN}}(y) = F(y)^n - (F(y) - \\pi(y))^n`, where
    :math:`F(y) = P_\\pi(Y \\preceq y)`. :math:`\\pi(y)` is the world's exact probability; F is the
    empirical CDF of ``n_reference`` world samples. The estimate is the mean of
    :math:`\\log\\pi_{\\mathrm{BoN}}(y) - \\log\\pi(y)` over ``n_draws`` best-of-n draws.

    Returns ``(kl, standard_error)``.

    Taught in chapter 6, "Best-of-n, and the first Goodhart curve".
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    ref = world.sample(n_reference, seed=seed)
    ref_keys = sorted((float(utility(t)), t) for t in ref)
    draws = world.sample(n_draws * n, seed=seed + 1)
    best = [max(draws[j * n:(j + 1) * n], key=lambda t: (float(utility(t)), t)) for j in range(n_draws)]
    import bisect

    out = []
    for y in best:
        key = (float(utility(y)), y)
        F_y = bisect.bisect_right(ref_keys, key) / n_reference  # empirical P(Y <= y)
        p_y = math.exp(world.logprob(y))
        F_y = max(F_y, p_y)  # the CDF includes y's own mass
        # log(F^n - (F - p)^n) = n log F + log(1 - (1 - p/F)^n), stable when p << F
        ratio = min(p_y / F_y, 1.0)
        lp_bon = n * math.log(F_y) + (0.0 if ratio == 1.0 else math.log(-math.expm1(n * math.log1p(-ratio))))
        out.append(lp_bon - math.log(p_y))
    out = np.array(out)
    return float(out.mean()), float(out.std(ddof=1) / math.sqrt(len(out)))


# ----------------------------------------------------------------------------------------------
# 6. Training: a from-scratch loop (the page) and TRL's RewardTrainer (the shipped model)
# ----------------------------------------------------------------------------------------------
def train_bradley_terry(rm, tokenizer, data, *, steps: int = 100, batch_size: int = 32, lr: float = 1e-3,
                        seed: int = 0, progress: bool = True) -> list[dict]:
    """A from-scratch Bradley-Terry training loop: Adam on :func:`bradley_terry_loss`.

    Each step draws ``batch_size`` pairs, runs chosen and rejected through the model in one
    padded batch (chosen first, as TRL's collator does), reads each score at the last real token
    and takes one optimiser step. ``rm`` is trained in place; returns per-step ``(loss, info)`` dicts.

    Taught in chapter 6, "Training it, from scratch".
    """
    from tqdm.auto import tqdm

    device = model_device(rm)
    gen = np.random.default_rng(seed)
    texts_c = [x + c for x, c in zip(data["prompt"], data["chosen"])]
    texts_r = [x + r for x, r in zip(data["prompt"], data["rejected"])]
    opt = torch.optim.Adam(rm.parameters(), lr=lr)
    rm.train()
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc="Bradley-Terry", mininterval=1.0):
        idx = gen.integers(0, len(texts_c), batch_size)
        enc = tokenizer([texts_c[i] for i in idx] + [texts_r[i] for i in idx], padding=True, return_tensors="pt")
        ids, am = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        hidden = rm.transformer(input_ids=ids, attention_mask=am).last_hidden_state  # (2B, T, d)
        values = rm.score(hidden).squeeze(-1)  # (2B, T): a score at every position
        r = last_token_scores(values, am)  # (2B,)
        loss, info = bradley_terry_loss(r[:batch_size], r[batch_size:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"loss": loss.item(), **info})
    rm.eval()
    return history


@dataclass
class RewardModelConfig:
    """Data and training recipe of the shipped reward model (``python -m rl4lmt.reward train``)."""

    policy: str = POLICY
    """The SFT policy that writes the responses, and the reward model's initialisation."""
    n_prompts: int = 2000
    """Training instructions; each gives up to C(k, 2) pairs (identical responses are not compared)."""
    n_eval_prompts: int = 500
    """Held-out instructions (a different seed) for the reported numbers."""
    k: int = 4
    """Responses ranked per instruction (InstructGPT used 4 to 9)."""
    beta: float = 10.0
    """Annotators' inverse temperature (:class:`Annotators`): gold differences of 0.1 are preferred 73:27."""
    noise: float = 0.1
    """Annotators' label noise: one comparison in ten is flipped."""
    length_bias: float = 0.02
    """Annotators' taste for length, per word: 10 extra words weigh like 0.2 of gold utility."""
    epochs: float = 1.0
    """Passes over the pairs (reward models overfit quickly; InstructGPT trained for one epoch)."""
    batch_size: int = 32
    """Pairs per step (64 sequences: chosen and rejected)."""
    lr: float = 1e-3
    """AdamW learning rate, decayed linearly to 0 (a tiny model takes a large step size)."""
    weight_decay: float = 0.0
    seed: int = 0
    """Seeds the responses, the rankings, the head's initialisation and the batch order."""
    threads: int = 1
    """One thread: the same seed gives the same weights (and 2 threads on a shared machine are slower)."""
    annotators: Annotators = field(init=False)

    def __post_init__(self):
        self.annotators = Annotators(beta=self.beta, noise=self.noise, length_bias=self.length_bias)


def fit(train_data, cfg: RewardModelConfig | None = None, progress: bool = True):
    """Fit a reward model to preference data with TRL's ``RewardTrainer``: ``(rm, tokenizer, log)``.

    The model comes from :func:`reward_model_from_lm` (``cfg.policy``, seeded head); the trainer
    adds the EOS-terminated completions to their prompts, tokenises, pads chosen and rejected rows
    into one batch, and minimises ``-logsigmoid(r_w - r_l)`` with AdamW and a linear decay.
    ``log`` holds the trainer's logged metrics and its mean training loss. Note: transformers'
    ``Trainer`` seeds the global generators with ``cfg.seed`` (that is how it makes runs repeatable).

    Taught in chapter 6, "The shipped reward model".
    """
    import tempfile

    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    cfg = cfg or RewardModelConfig()
    rm, tokenizer = reward_model_from_lm(cfg.policy, seed=cfg.seed, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr, weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=0,
            seed=cfg.seed, data_seed=cfg.seed, logging_steps=50, save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=not progress, dataloader_num_workers=0, max_length=None,
        )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # no notices about the new, randomly initialised head
        try:
            trainer = RewardTrainer(model=rm, args=args, train_dataset=train_data, processing_class=tokenizer)
            result = trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
        history = [h for h in trainer.state.log_history if "loss" in h]
    log = {"train_loss": result.training_loss,
           "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in history]}
    return trainer.model.eval(), tokenizer, log


def train(out_dir=None, cfg: RewardModelConfig | None = None, progress: bool = True) -> dict:
    """Build the shipped reward model: preference data, :func:`fit`, held-out :func:`evaluate`, save.

    Preference data from :func:`preference_data` over the policy's own responses (training and
    held-out instructions from different seeds), the model fitted with TRL's ``RewardTrainer``,
    saved with its tokenizer and ``training.json`` (recipe, timings, held-out evaluation) in
    ``out_dir``. Seeded end to end: the same command rebuilds the same bytes on the same machine.

    Taught in chapter 6, "The shipped reward model".
    """
    from rl4lmt import zoo
    from rl4lmt.utils import set_seed

    cfg = cfg or RewardModelConfig()
    out_dir = Path(out_dir) if out_dir is not None else zoo.checkpoint_dir("tiny-reviews-rm")
    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    train_data, eval_data = recipe_data(cfg)
    t_data = time.perf_counter() - t0
    rm, tokenizer, log = fit(train_data, cfg, progress)
    t_train = time.perf_counter() - t0 - t_data
    metrics = evaluate(rm, tokenizer, eval_data)
    out_dir.mkdir(parents=True, exist_ok=True)
    rm.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    report = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "annotators"},
        "n_train_pairs": len(train_data), "n_eval_pairs": len(eval_data),
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1),
        "train_loss": log["train_loss"], "eval": metrics, "log": log["history"],
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1))
    return report


def recipe_data(cfg: RewardModelConfig):
    """The recipe's ``(train_data, eval_data)``: :func:`preference_data` with seeds ``seed`` and ``seed + 10000``."""
    from rl4lmt import zoo

    world = TinyReviews(seed=cfg.seed)
    policy, tokenizer = zoo.load(cfg.policy, device="cpu")
    train_data = preference_data(policy, tokenizer, world, cfg.n_prompts, k=cfg.k,
                                 annotators=cfg.annotators, seed=cfg.seed)
    eval_data = preference_data(policy, tokenizer, world, cfg.n_eval_prompts, k=cfg.k,
                                annotators=cfg.annotators, seed=cfg.seed + 10_000)
    return train_data, eval_data


# ----------------------------------------------------------------------------------------------
# 7. Outcome and process supervision (Lightman et al., 2023)
# ----------------------------------------------------------------------------------------------
# A *process* reward model scores every step of a response, not just the finished one. Lightman
# et al. label each step of a solution by hand; the world labels every prefix exactly: the gold
# posterior that the response will do what was asked, given the words so far
# (TinyReviews.prefix_instruction_scores, a martingale whose last value is the outcome's gold).
# A step is one word, which is one token of the course's word-level tokenizer: the posterior
# moves at single words ("not", ", but", the aspect's noun), and one label per token needs no
# step separator. No TRL release ships a process-reward trainer any more (TRL 1.16 has none), so
# the loop is written out here; its loss is checked against torch's BCE in tests/test_reward.py.
__all__ += [
    "process_labels", "off_task_instructions", "step_label_batch", "step_label_loss", "step_model_from_lm",
    "step_scores", "aggregate_steps", "train_step_model", "ProcessRewardModelConfig", "train_prm",
]


def process_labels(world: TinyReviews, instruction: str, response: str) -> np.ndarray:
    """Per-step gold labels of a response: :math:`v^*_t = P(s \\in S_x, a = a_x \\mid y_{1:t})`.

    ``T + 2`` values: before the first word (the prior, read at the instruction's last token),
    after each of the ``T`` words, and after the end of the response (equal to
    :func:`gold_utility`). The outcome label is the last one only.

    Taught in chapter 6, "Outcome and process rewards".
    """
    return world.prefix_instruction_scores(instruction, response, ended=True)


def off_task_instructions(instructions, share: float, seed: int = 0) -> list[str]:
    """Re-pair a random ``share`` of responses with another response's instruction (exact negatives).

    The policy's responses follow their instructions (the SFT model's mean gold is about 0.8), so
    a step model trained on them alone can learn that a fluent review is a good one and never read
    the request: the first ``tiny-reviews-prm`` scored positive reviews for a *negative* request at
    about 0.74. Giving a share of the responses the instruction of another one (a random cyclic
    shift among those picked, so the instructions stay the same multiset) adds responses that answer
    a different request; the world labels them exactly like the others, mostly near 0. Returns the
    new list of instructions, one per response; ``seed`` makes it repeatable.

    Taught in chapter 6, "Outcome and process rewards".
    """
    from rl4lmt.utils import check_texts

    xs = check_texts(instructions)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be a number in [0, 1], got {share!r}")
    picked = np.random.default_rng(seed).choice(len(xs), int(round(share * len(xs))), replace=False)
    new = list(xs)
    for i, j in zip(picked, np.roll(picked, 1)):  # each picked response takes the previous one's request
        new[i] = xs[j]
    return new


def step_label_batch(tokenizer, world: TinyReviews, instructions, responses, *, outcome_only: bool = False) -> dict:
    """A right-padded batch ``<bos> x y <eos>`` with a gold label at every step position.

    Returns ``input_ids``/``attention_mask`` ``(B, L)``, ``labels`` ``(B, L)`` float32 and
    ``label_mask`` ``(B, L)`` bool: the ``T + 2`` positions from the instruction's last token to
    the EOS carry :func:`process_labels` (position ``i`` has read the response up to its own
    word); with ``outcome_only`` only the EOS position does (outcome supervision with the same
    data, Lightman et al.'s fair baseline).

    Taught in chapter 6, "Outcome and process rewards".
    """
    from rl4lmt.utils import check_texts

    instructions, responses = check_texts(instructions), check_texts(responses)
    if len(instructions) != len(responses) or not instructions:
        raise ValueError(f"instructions and responses must be non-empty and of one length, got "
                         f"{len(instructions)} and {len(responses)}")
    texts = [f"{x} {y} {tokenizer.eos_token}" for x, y in zip(instructions, responses)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.zeros(enc["input_ids"].shape)
    label_mask = torch.zeros(enc["input_ids"].shape, dtype=torch.bool)
    for i, (x, y) in enumerate(zip(instructions, responses)):
        start = len(tokenizer(x)["input_ids"]) - 1  # the instruction's last token (":")
        v = process_labels(world, x, y)
        end = start + len(v)  # one position per word, plus the EOS
        if end != int(enc["attention_mask"][i].sum()):
            raise ValueError(f"response {y!r} is not one token per word under this tokenizer")
        if outcome_only:
            labels[i, end - 1], label_mask[i, end - 1] = float(v[-1]), True
        else:
            labels[i, start:end], label_mask[i, start:end] = torch.as_tensor(v, dtype=torch.float32), True
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels, "label_mask": label_mask}


def step_label_loss(logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-step logits against soft labels, averaged over labelled steps.

    .. math:: \\mathcal L = -\\frac{1}{|M|}\\sum_{(b,t) \\in M} v^*_{bt} \\log\\sigma(z_{bt})
              + (1 - v^*_{bt}) \\log\\sigma(-z_{bt})

    With soft labels :math:`v^* \\in [0, 1]` its minimiser is :math:`\\sigma(z) = v^*`: the head
    learns the probability of success given the prefix (a value function). ``logsigmoid`` keeps
    large logits finite.

    Taught in chapter 6, "Outcome and process rewards".
    """
    _as_scores(logits, "logits")
    if labels.shape != logits.shape or label_mask.shape != logits.shape:
        raise ValueError(f"labels and label_mask must have the logits' shape {tuple(logits.shape)}")
    mask = label_mask.to(logits.device).bool()
    if not mask.any():
        raise ValueError("label_mask selects no step")
    y = labels.to(logits.device, logits.dtype)
    nll = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    return nll[mask].mean()


def step_model_from_lm(name: str = POLICY, *, seed: int = 0, device=None):
    """A per-position scalar model from a causal LM: ``(GPT2ForTokenClassification, tokenizer)``.

    The transformer is the LM's (``rl4lmt.zoo`` name), the head a fresh ``Linear(d, 1)`` drawn
    with ``seed`` (the caller's RNG is restored), no dropout before it. ``logits[b, t, 0]`` is the
    score after reading tokens ``1..t``: a process reward at every step.

    Taught in chapter 6, "Outcome and process rewards".
    """
    from transformers import GPT2ForTokenClassification

    return _scalar_head_model(GPT2ForTokenClassification, name, seed, device, classifier_dropout=0.0)


@torch.no_grad()
def step_scores(model, tokenizer, instructions, responses, *, batch_size: int = 256) -> list[np.ndarray]:
    """A step model's :math:`\\sigma(z_t)` at the ``T + 1`` response steps (each word, then the EOS).

    Returns one float64 array per response; its last entry is the model's outcome prediction.

    Taught in chapter 6, "Outcome and process rewards".
    """
    from rl4lmt.utils import check_texts

    instructions, responses = check_texts(instructions), check_texts(responses)
    if len(instructions) != len(responses):
        raise ValueError(f"instructions and responses must have one length, got {len(instructions)} "
                         f"and {len(responses)}")
    device = model_device(model)
    out = []
    for i in range(0, len(responses), batch_size):
        xs, ys = instructions[i:i + batch_size], responses[i:i + batch_size]
        enc = tokenizer([f"{x} {y} {tokenizer.eos_token}" for x, y in zip(xs, ys)], padding=True, return_tensors="pt")
        p = torch.sigmoid(model(input_ids=enc["input_ids"].to(device),
                                attention_mask=enc["attention_mask"].to(device)).logits[..., 0].double()).cpu()
        for row, x, am in zip(p, xs, enc["attention_mask"]):
            first = len(tokenizer(x)["input_ids"])  # the response's first word
            out.append(row[first:int(am.sum())].numpy())
    return out


def aggregate_steps(step_probs, how: str = "min") -> np.ndarray:
    """One score per response from its per-step probabilities, as Lightman et al. compare them.

    ``"min"``: the weakest step; ``"product"``: :math:`\\sum_t \\log p_t` (the log of the
    probability that every step is right, if steps failed independently); ``"last"``: the
    prediction after the whole response (an outcome score read from the process model).

    Taught in chapter 6, "Outcome and process rewards".
    """
    if how not in ("min", "product", "last"):
        raise ValueError(f"how must be 'min', 'product' or 'last', got {how!r}")
    rows = [np.asarray(p, np.float64) for p in step_probs]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError("step_probs must be a non-empty list of non-empty 1-D arrays")
    if how == "min":
        return np.array([r.min() for r in rows])
    if how == "last":
        return np.array([r[-1] for r in rows])
    with np.errstate(divide="ignore"):
        return np.array([np.log(r).sum() for r in rows])


def train_step_model(model, batch: dict, *, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                     seed: int = 0, progress: bool = True) -> list[float]:
    """Fit a step model to labelled steps (:func:`step_label_batch`) with Adam on :func:`step_label_loss`.

    Each step draws ``batch_size`` rows of ``batch`` (``seed``-ed), trims the common padding,
    and takes one optimiser step. ``model`` is trained in place; returns the per-step losses.
    The same loop trains an outcome model when the batch was built with ``outcome_only=True``.

    Taught in chapter 6, "Outcome and process rewards".
    """
    from tqdm.auto import tqdm

    device = model_device(model)
    rng = np.random.default_rng(seed)
    n = batch["input_ids"].shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="step labels", mininterval=1.0):
        idx = torch.as_tensor(rng.integers(0, n, batch_size))
        am = batch["attention_mask"][idx]
        width = int(am.sum(1).max())  # right padding: drop the columns no row uses
        logits = model(input_ids=batch["input_ids"][idx, :width].to(device),
                       attention_mask=am[:, :width].to(device)).logits[..., 0]
        loss = step_label_loss(logits, batch["labels"][idx, :width], batch["label_mask"][idx, :width])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass
class ProcessRewardModelConfig:
    """Data and training recipe of the shipped process reward model (``python -m rl4lmt.reward train-prm``)."""

    policy: str = POLICY
    """The SFT policy that writes the responses, and the step model's initialisation."""
    n_prompts: int = 1000
    """Training instructions (``world.instructions`` with seed ``seed + 20000``, apart from the RM's)."""
    k: int = 2
    """Responses sampled per instruction; every word of each is a labelled step."""
    off_task: float = 0.25
    """Share of training responses given another response's instruction (:func:`off_task_instructions`):
    without them the model never has to read the request."""
    n_eval_prompts: int = 64
    """Held-out instructions (seed ``seed + 30000``) for the reported per-step error."""
    steps: int = 1000
    """Adam steps of :func:`train_step_model` (reading the request as well as the review takes more
    than the 300 that on-task responses alone needed)."""
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    """Seeds the instructions, the sampled responses, the head's initialisation and the batch order."""
    threads: int = 1
    """One thread: the same seed gives the same weights."""


def train_prm(out_dir=None, cfg: ProcessRewardModelConfig | None = None, progress: bool = True) -> dict:
    """Build the shipped process reward model ``tiny-reviews-prm``: a ``GPT2ForTokenClassification``.

    The policy's responses to fresh instructions (a share re-paired with other instructions,
    :func:`off_task_instructions`), every step labelled with the world's exact posterior
    (:func:`step_label_batch`), fitted by :func:`train_step_model` from
    :func:`step_model_from_lm`; saved with its tokenizer and ``training.json`` (recipe, timings,
    held-out per-step error against the exact posterior). Seeded end to end: the same command
    rebuilds the same bytes on the same machine. ``benchmarks/reward_process.py`` trains the same
    recipe (its process model of the largest size and model seed 0) beside outcome supervision.

    Taught in chapter 6, "Outcome and process rewards".
    """
    from rl4lmt import zoo

    cfg = cfg or ProcessRewardModelConfig()
    out_dir = Path(out_dir) if out_dir is not None else zoo.checkpoint_dir("tiny-reviews-prm")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    world = TinyReviews(seed=cfg.seed)
    policy, tokenizer = zoo.load(cfg.policy, device="cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    xs0 = [x for x, _ in world.instructions(cfg.n_prompts, seed=cfg.seed + 20_000)]
    ys0 = sample_responses(policy, tokenizer, xs0, cfg.k, generator=gen)
    xs, ys = [x for x, yy in zip(xs0, ys0) for _ in yy], [y for yy in ys0 for y in yy]
    xs = off_task_instructions(xs, cfg.off_task, cfg.seed)
    batch = step_label_batch(tokenizer, world, xs, ys)
    t_data = time.perf_counter() - t0
    model, _ = step_model_from_lm(cfg.policy, seed=cfg.seed, device="cpu")
    losses = train_step_model(model, batch, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                              seed=cfg.seed, progress=progress)
    t_train = time.perf_counter() - t0 - t_data
    ex0 = [x for x, _ in world.instructions(cfg.n_eval_prompts, seed=cfg.seed + 30_000)]
    ey0 = sample_responses(policy, tokenizer, ex0, 4, generator=gen)
    ex, ey = [x for x, yy in zip(ex0, ey0) for _ in yy], [y for yy in ey0 for y in yy]
    pred = np.concatenate(step_scores(model, tokenizer, ex, ey))
    gold = np.concatenate([process_labels(world, x, y)[1:] for x, y in zip(ex, ey)])
    # the same responses, each answering another request: does the model read the instruction?
    ox = off_task_instructions(ex, 1.0, cfg.seed)
    off_pred = np.array([p[-1] for p in step_scores(model, tokenizer, ox, ey)])
    off_gold = np.array([gold_utility(world, x, y) for x, y in zip(ox, ey)])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    report = {
        "config": asdict(cfg), "n_train_responses": len(ys), "n_train_steps_labelled": int(batch["label_mask"].sum()),
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1),
        "loss_first_20": float(np.mean(losses[:20])), "loss_last_20": float(np.mean(losses[-20:])),
        "eval": {"n_responses": len(ey), "n_steps": int(len(gold)), "mae": float(np.abs(pred - gold).mean()),
                 "accuracy_at_half": float(((pred > 0.5) == (gold > 0.5)).mean()),
                 "off_task_final_mae": float(np.abs(off_pred - off_gold).mean()),
                 "off_task_final_mean": float(off_pred.mean()), "off_task_gold_mean": float(off_gold.mean())},
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1))
    return report


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl4lmt.reward", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="rebuild the shipped tiny-reviews-rm reward model")
    p_train.add_argument("--out", default=None, help="output folder (default: the package's checkpoint)")
    for name, default in asdict(RewardModelConfig()).items():
        if name != "annotators":
            p_train.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    p_prm = sub.add_parser("train-prm", help="rebuild the shipped tiny-reviews-prm process reward model")
    p_prm.add_argument("--out", default=None, help="output folder (default: the package's checkpoint)")
    for name, default in asdict(ProcessRewardModelConfig()).items():
        p_prm.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.command == "train-prm":
        cfg = ProcessRewardModelConfig(**{f: getattr(args, f) for f in asdict(ProcessRewardModelConfig())})
        print(json.dumps(train_prm(args.out, cfg), indent=1))
    if args.command == "train":
        fields = [f for f in asdict(RewardModelConfig()) if f != "annotators"]
        report = train(args.out, RewardModelConfig(**{f: getattr(args, f) for f in fields}))
        print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    _main()
