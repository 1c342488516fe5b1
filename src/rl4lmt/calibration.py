"""Calibration and honest evaluation (taught in chapter 8).

A model is **calibrated** when its confidence is its accuracy: among all predictions made with
confidence :math:`c`, a fraction :math:`c` is right (Guo et al., 2017). Real data only shows
samples of the truth; the TinyReviews world *is* the truth, so here every sample-based measure
sits beside the exact quantity it estimates. What lives here, in the order of the chapter:

1. **Binned calibration** -- :func:`reliability_diagram` (per-bin confidence, accuracy, counts;
   equal-width or equal-mass bins), :func:`expected_calibration_error` (ECE, the count-weighted
   mean gap), :func:`top_label` (confidence and correctness of the argmax from the *same*
   distribution), :func:`brier_score`, :func:`nll`. Checked against torchmetrics'
   ``BinaryCalibrationError`` / ``MulticlassCalibrationError`` (``norm='l1'``) and
   scikit-learn's ``calibration_curve``, ``brier_score_loss`` and ``log_loss``.
2. **Exact calibration against the world** -- :func:`next_token_distributions` (a model's and the
   world's next-word distributions at every position of some texts; the tokenizer puts the
   world's vocabulary first, so token id ``i`` is ``world.vocab[i]``) and
   :func:`exact_reliability_diagram` / :func:`exact_calibration_error`: the same bins, with the
   accuracy of each prediction replaced by the world's exact probability that it is right.
3. **Temperature scaling** -- :func:`fit_temperature` (the :math:`T` that minimises the NLL of
   held-out labels) and :func:`world_optimal_temperature` (the :math:`T` that minimises the
   cross-entropy against the world's exact distributions).
4. **Sequence-level calibration** -- :func:`world_positive_probability` (the world's exact
   :math:`P(s > 0 \\mid \\text{prefix})`) and :func:`model_positive_probability` (the share of a
   model's own completions that the world judges positive).
5. **Production variability** (Giulianelli et al., 2023) -- :func:`lexical_similarity`,
   :func:`syntactic_similarity` (word classes read off the world's grammar),
   :func:`sentiment_similarity`, :func:`topic_similarity` and :func:`production_variability`
   (mean pairwise distance between productions for the same prompt).
6. **Evaluating RL across seeds** (Agarwal et al., 2021) -- :func:`iqm`,
   :func:`stratified_bootstrap_ci`, :func:`performance_profile`, :func:`normalize_scores`;
   checked against rliable and ``scipy.stats.trim_mean``.

:func:`available_models` lists which stages of the course's pipeline (pretrained, SFT, PPO, DPO)
are present, so a chapter can compare whichever exist.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

__all__ = [
    "ReliabilityDiagram",
    "reliability_diagram",
    "expected_calibration_error",
    "top_label",
    "brier_score",
    "nll",
    "next_token_distributions",
    "exact_reliability_diagram",
    "exact_calibration_error",
    "fit_temperature",
    "world_optimal_temperature",
    "world_positive_probability",
    "model_positive_probability",
    "word_classes",
    "lexical_similarity",
    "syntactic_similarity",
    "sentiment_similarity",
    "topic_similarity",
    "production_variability",
    "iqm",
    "stratified_bootstrap_ci",
    "performance_profile",
    "normalize_scores",
    "PIPELINE",
    "available_models",
]

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_1d(name: str, x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy() if torch.is_floating_point(x) else x.detach().cpu().numpy()
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be an array, list or tensor, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(dtype)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return int(n_bins)


def _as_probs(name: str, probs) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor):
        probs = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    if not torch.is_floating_point(probs):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, classes) with n >= 1 and classes >= 2, got {tuple(probs.shape)}")
    return probs


def _as_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    return labels.long()


# --------------------------------------------------------------------------------------------
# 1. Binned calibration: reliability diagrams, ECE, Brier score, NLL
# --------------------------------------------------------------------------------------------


@dataclass
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (bins that received no prediction hold NaN).

    ``edges`` has ``n_bins + 1`` entries; bin ``b`` holds the predictions whose confidence lies in
    ``[edges[b], edges[b+1])`` -- the last bin is closed, so a confidence of exactly 1.0 belongs
    to it. ``confidence[b]`` is the mean confidence in the bin, ``accuracy[b]`` the mean
    correctness (observed 0/1 outcomes, or exact probabilities of being right), ``counts[b]`` the
    total weight (the number of predictions when unweighted).
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """:math:`\\sum_b \\frac{n_b}{N} |\\mathrm{acc}_b - \\mathrm{conf}_b|` over the non-empty bins."""
        full = self.counts > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.counts[full] * gaps).sum() / self.counts.sum())


def _bin_index(conf: np.ndarray, n_bins: int, strategy: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every prediction, and the bin edges, for equal-width or equal-mass bins."""
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # [lo, hi) bins; min() puts a confidence of exactly 1.0 into the last bin
        idx = np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)
        return idx, edges
    if strategy == "mass":
        # sort by confidence and cut into n_bins runs of (nearly) equal total weight
        order = np.argsort(conf, kind="stable")
        cum = np.cumsum(weights[order]) - weights[order]  # weight strictly before each prediction
        sorted_idx = np.minimum((cum / weights.sum() * n_bins).astype(int), n_bins - 1)
        idx = np.empty_like(sorted_idx)
        idx[order] = sorted_idx
        edges = np.empty(n_bins + 1)
        edges[0], edges[-1] = 0.0, 1.0
        for b in range(1, n_bins):  # an edge: the first confidence of bin b (or its neighbour's)
            inside = conf[idx >= b]
            edges[b] = inside.min() if inside.size else 1.0
        return idx, edges
    raise ValueError(f"strategy must be 'width' (equal-width bins) or 'mass' (equal-mass bins), got {strategy!r}")


def reliability_diagram(confidences, correct, n_bins: int = 10, strategy: str = "width",
                        weights=None) -> ReliabilityDiagram:
    """Bin predictions by confidence; per bin, the mean confidence, the accuracy and the count.

    Equal-width bins ``strategy="width"`` are :math:`[0, \\frac1M), [\\frac1M, \\frac2M), \\dots,
    [\\frac{M-1}M, 1]` (the last one closed); equal-mass bins ``strategy="mass"`` sort the
    predictions by confidence and cut them into ``n_bins`` runs of equal size (Nixon et al., 2019),
    so every bin is estimated from the same number of predictions.

    Args:
        confidences: predicted probabilities in [0, 1], shape ``(N,)`` -- for a classifier, the
            probability of its top label (:func:`top_label`); for a binary one, ``P(y = 1)``.
        correct: the outcome of each prediction, shape ``(N,)``: 1/0 (or True/False) observed
            correctness, or an exact probability of being correct in [0, 1].
        n_bins: the number of bins ``M``.
        strategy: ``"width"`` or ``"mass"``.
        weights: optional non-negative weight of each prediction (default: all 1).

    Returns:
        A :class:`ReliabilityDiagram`; its ``.ece`` is the expected calibration error.

    Taught in chapter 8, "Reliability diagrams and ECE".
    """
    conf = _as_1d("confidences", confidences)
    acc = _as_1d("correct", correct)
    n_bins = _check_n_bins(n_bins)
    if acc.shape != conf.shape:
        raise ValueError(f"correct must have the shape of confidences {conf.shape}, got {acc.shape}")
    tol = 1e-6  # float rounding: a softmax or a sum of probabilities may land just outside [0, 1]
    if conf.min() < -tol or conf.max() > 1 + tol:
        raise ValueError("confidences must lie in [0, 1]")
    if acc.min() < -tol or acc.max() > 1 + tol:
        raise ValueError("correct must lie in [0, 1] (0/1 outcomes or probabilities)")
    conf, acc = np.clip(conf, 0.0, 1.0), np.clip(acc, 0.0, 1.0)
    w = np.ones_like(conf) if weights is None else _as_1d("weights", weights)
    if w.shape != conf.shape or w.min() < 0 or w.sum() <= 0:
        raise ValueError("weights must be non-negative, of the shape of confidences, with a positive sum")
    idx, edges = _bin_index(conf, n_bins, strategy, w)
    counts = np.bincount(idx, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN
        mean_conf = np.bincount(idx, weights=w * conf, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=w * acc, minlength=n_bins) / counts
    mean_conf[counts == 0] = np.nan
    mean_acc[counts == 0] = np.nan
    return ReliabilityDiagram(edges, mean_conf, mean_acc, counts)


def expected_calibration_error(confidences, correct, n_bins: int = 10, strategy: str = "width", weights=None) -> float:
    """ECE: :math:`\\sum_{b=1}^{M} \\frac{n_b}{N}\\, |\\mathrm{acc}(b) - \\mathrm{conf}(b)|` (Naeini et al., 2015).

    Each bin's gap between accuracy and mean confidence, weighted by the share of predictions in
    the bin. Equals torchmetrics' ``BinaryCalibrationError(n_bins, norm="l1")`` (with ``P(y=1)``
    and ``y``) and ``MulticlassCalibrationError`` (with :func:`top_label`), except that a
    confidence of exactly 1.0 joins the last bin here instead of a bin of its own there.
    See :func:`reliability_diagram` for the arguments.

    Taught in chapter 8, "Reliability diagrams and ECE".
    """
    return reliability_diagram(confidences, correct, n_bins, strategy, weights).ece


def top_label(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence and correctness of the top label: :math:`\\max_k p_k` and :math:`[\\arg\\max_k p_k = y]`.

    Both come from the same row, so the confidence is the probability of the very token that is
    checked against the label. Returns float64 tensors of shape ``(N,)``.

    Taught in chapter 8, "Reliability diagrams and ECE".
    """
    probs = _as_probs("probs", probs)
    labels = _as_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    conf, pred = probs.max(dim=-1)  # (N,), (N,)
    return conf.double(), (pred == labels).double()


def brier_score(probs, labels) -> float:
    """Multiclass Brier score: :math:`\\frac1N \\sum_i \\sum_k (p_{ik} - [y_i = k])^2` (Brier, 1950).

    A proper scoring rule: minimised in expectation by the true distribution. For two classes it
    is twice scikit-learn's ``brier_score_loss`` of ``P(y = 1)`` (which counts one class only).

    Taught in chapter 8, "Proper scores: Brier and NLL".
    """
    probs = _as_probs("probs", probs).double()
    labels = _as_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(-1).mean())


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Negative log-likelihood :math:`-\\frac1N \\sum_i \\log p_{i, y_i}` in nats (a proper score).

    Probabilities are clipped at ``eps`` so that a zero on the label gives a large, finite value.

    Taught in chapter 8, "Proper scores: Brier and NLL".
    """
    probs = _as_probs("probs", probs).double()
    labels = _as_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    picked = probs.gather(1, labels[:, None]).squeeze(1).clamp_min(eps)
    return float(-picked.log().mean())


# --------------------------------------------------------------------------------------------
# 2. Exact calibration against the world
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def next_token_distributions(model, tokenizer, world, texts: Sequence[str]) -> dict:
    """A model's and the world's next-word distributions at every event of ``texts``.

    Every text contributes ``len(text.split()) + 1`` events (its words and the end of review),
    each with the prefix before it. The world's distribution comes from
    ``world.next_word_vector(prefix)`` (exact), the model's from one teacher-forced forward pass;
    both are laid out over the model's vocabulary (the world's words first, so id ``i`` is
    ``world.vocab[i]``; the world gives probability 0 to the model's extra tokens, e.g. padding).

    Returns:
        ``{"logits": (E, V) float32, "model_probs": (E, V) float64, "world_probs": (E, V) float64,
        "targets": (E,) long (the word that actually came next), "prefixes": list of E str}``.

    Taught in chapter 8, "Calibration against the truth".
    """
    from rl4lmt.lm import encode_texts
    from rl4lmt.utils import check_texts

    texts = check_texts(texts)
    for b, text in enumerate(texts):
        if not world.is_grammatical(text):
            raise ValueError(f"texts[{b}] is not a review the world can produce: {text!r}")
    input_ids, attention_mask = encode_texts(tokenizer, texts)
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float().cpu()
    n_world = len(world.vocab)
    rows, world_rows, targets, prefixes, cache = [], [], [], [], {}
    for b, text in enumerate(texts):
        words = text.split()
        for t in range(len(words) + 1):  # the prefix of t words predicts event t
            prefix = " ".join(words[:t])
            if prefix not in cache:  # many reviews share their first words
                cache[prefix] = world.next_word_vector(prefix)
            rows.append(logits[b, t])
            world_rows.append(cache[prefix])
            targets.append(int(input_ids[b, t + 1]))
            prefixes.append(prefix)
    logits_e = torch.stack(rows)  # (E, V)
    world_probs = torch.zeros(logits_e.shape, dtype=torch.float64)
    world_probs[:, :n_world] = torch.as_tensor(np.stack(world_rows))
    return {
        "logits": logits_e,
        "model_probs": logits_e.double().softmax(-1),
        "world_probs": world_probs,
        "targets": torch.tensor(targets),
        "prefixes": prefixes,
    }


def exact_reliability_diagram(model_probs, world_probs, n_bins: int = 10, strategy: str = "width",
                              weights=None) -> ReliabilityDiagram:
    """Reliability diagram of the top label with *exact* accuracies: :math:`p^*(\\hat w \\mid x)`.

    For each context :math:`x` the model predicts :math:`\\hat w = \\arg\\max_w q(w \\mid x)` with
    confidence :math:`q(\\hat w \\mid x)`; the chance that the next word really is :math:`\\hat w`
    is the world's :math:`p^*(\\hat w \\mid x)`. Binning these instead of sampled 0/1 outcomes
    gives the calibration error that sample-based ECE estimates, with no sampling noise left
    (its only approximation is the binning).

    Args:
        model_probs: ``(E, V)`` the model's next-token distributions.
        world_probs: ``(E, V)`` the world's next-word distributions on the same vocabulary.
        n_bins, strategy, weights: as in :func:`reliability_diagram`.

    Taught in chapter 8, "Calibration against the truth".
    """
    q = _as_probs("model_probs", model_probs).double()
    p = _as_probs("world_probs", world_probs).double()
    if p.shape != q.shape:
        raise ValueError(f"world_probs must have the shape of model_probs {tuple(q.shape)}, got {tuple(p.shape)}")
    conf, pred = q.max(dim=-1)
    acc = p.gather(1, pred[:, None]).squeeze(1)  # the world's probability that the argmax is right
    return reliability_diagram(conf, acc, n_bins, strategy, weights)


def exact_calibration_error(model_probs, world_probs, n_bins: int = 10, strategy: str = "width", weights=None) -> float:
    """The ECE of the top label with exact accuracies (see :func:`exact_reliability_diagram`).

    Taught in chapter 8, "Calibration against the truth".
    """
    return exact_reliability_diagram(model_probs, world_probs, n_bins, strategy, weights).ece


# --------------------------------------------------------------------------------------------
# 3. Temperature scaling
# --------------------------------------------------------------------------------------------


def _minimise_over_log_t(loss: Callable[[float], float], t_min: float, t_max: float) -> float:
    """The temperature in [t_min, t_max] minimising a smooth loss, by bounded search over log T."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: loss(math.exp(log_t)), bounds=(math.log(t_min), math.log(t_max)),
                          method="bounded", options={"xatol": 1e-7})
    return float(math.exp(res.x))


def _check_logits(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
        raise TypeError("logits must be a floating-point torch.Tensor")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (n, classes), got {tuple(logits.shape)}")
    return logits.detach().double().cpu()


def fit_temperature(logits: torch.Tensor, labels, t_min: float = 0.05, t_max: float = 20.0) -> float:
    """Temperature scaling (Guo et al., 2017): the NLL-optimal :math:`T` on held-out data.

    .. math:: T^* = \\arg\\min_T -\\sum_i \\log \\mathrm{softmax}(z_i / T)_{y_i}

    One scalar divides every logit vector *before* the softmax; it never changes the argmax, so
    accuracy stays and only the confidences move. Fit it on **held-out** data (not the data you
    report calibration on, and not the training data the model has overfitted).

    Args:
        logits: ``(n, classes)`` logits of held-out predictions.
        labels: ``(n,)`` their true class ids.
        t_min, t_max: the search interval.

    Returns:
        The fitted temperature (``> 1`` softens an over-confident model).

    Taught in chapter 8, "Temperature scaling".
    """
    z = _check_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])

    def loss(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / t, y))

    return _minimise_over_log_t(loss, t_min, t_max)


def world_optimal_temperature(logits: torch.Tensor, world_probs, weights=None, t_min: float = 0.05,
                              t_max: float = 20.0) -> float:
    """The temperature that is best against the truth.

    .. math:: T^*_{world} = \\arg\\min_T \\sum_x w_x\\, H(p^*(\\cdot \\mid x), \\mathrm{softmax}(z_x / T))

    The expected NLL of the next word under the world's exact distribution, i.e. the limit of
    :func:`fit_temperature` with infinitely many held-out samples from these contexts.

    Taught in chapter 8, "Temperature scaling".
    """
    z = _check_logits(logits)
    p = _as_probs("world_probs", world_probs).double().cpu()
    if p.shape != z.shape:
        raise ValueError(f"world_probs must have the shape of logits {tuple(z.shape)}, got {tuple(p.shape)}")
    w = torch.ones(z.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(
        _as_1d("weights", weights))
    support = p > 0  # 0 * log q terms vanish even where q underflows

    def loss(t: float) -> float:
        logq = (z / t).log_softmax(-1)
        ce = -(p * torch.where(support, logq, torch.zeros_like(logq))).sum(-1)
        return float((w * ce).sum() / w.sum())

    return _minimise_over_log_t(loss, t_min, t_max)


# --------------------------------------------------------------------------------------------
# 4. Sequence-level calibration: is the review going to be positive?
# --------------------------------------------------------------------------------------------


def world_positive_probability(world, prefix: str) -> float:
    """The world's exact :math:`P(s > 0 \\mid \\text{a review starts with prefix})`.

    Bayes' rule over the latent sentiment: :math:`P(s>0 \\mid x) = P(s>0)\\, p(x \\mid s>0) / p(x)`,
    with both prefix probabilities from the forward algorithm.

    Taught in chapter 8, "Sequence-level calibration".
    """
    post = world.prefix_sentiment_posterior(prefix)  # {} when the prefix is impossible
    if not post:
        raise ValueError(f"prefix {prefix!r} has probability 0 in the world")
    return float(min(1.0, sum(p for s, p in post.items() if s > 0)))


def model_positive_probability(model, tokenizer, world, prefixes: Sequence[str], n_samples: int = 32,
                               max_new_tokens: int = 40, *, generator: torch.Generator | None = None) -> np.ndarray:
    """A language model's implied :math:`P(s > 0 \\mid x)`: how often its own completions are positive.

    For each prefix, ``n_samples`` completions are drawn from the model (pure ancestral sampling,
    ``rl4lmt.decoding.sample``); each complete review is scored by the world's exact posterior
    :math:`P(s > 0 \\mid \\text{review})` (0 for a review the world cannot produce), and the
    scores are averaged. A model whose continuations carry the sentiment the prefix implies gets
    :func:`world_positive_probability` back.

    Returns:
        float64 array ``(len(prefixes),)``.

    Taught in chapter 8, "Sequence-level calibration".
    """
    from rl4lmt.decoding import sample
    from rl4lmt.utils import check_texts

    prefixes = check_texts(prefixes) if len(prefixes) else []
    if not prefixes:
        raise ValueError("prefixes must be a non-empty list of str")
    device = next(model.parameters()).device
    encoded = [list(tokenizer(prefix)["input_ids"]) for prefix in prefixes]
    out = np.zeros(len(prefixes))
    for length in sorted({len(e) for e in encoded}):  # prompts of one length share a batch
        which = [i for i, e in enumerate(encoded) if len(e) == length]
        ids = torch.tensor([encoded[i] for i in which], device=device).repeat_interleave(n_samples, 0)  # (k*n, P)
        gen = sample(model, ids, max_new_tokens, generator=generator, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(gen[:, 1:], skip_special_tokens=True)
        scores = []
        for text in texts:
            post = world.sentiment_posterior(" ".join(text.split()))
            scores.append(sum(p for s, p in post.items() if s > 0) if post else 0.0)
        out[which] = np.asarray(scores).reshape(len(which), n_samples).mean(axis=1)
    return out


# --------------------------------------------------------------------------------------------
# 5. Production variability (Giulianelli et al., 2023)
# --------------------------------------------------------------------------------------------


def word_classes() -> dict[str, str]:
    """A part-of-speech-like class for every word of the world, read off its grammar.

    Classes: ``DET`` (the, a), ``NOUN`` (aspects), ``COP`` (was, were, felt, seemed), ``NEG`` (not),
    ``INT`` (intensifiers), ``ADJ``, ``VERB``, ``PRON`` (i), ``CONJ`` (and, but), ``PUNCT``,
    ``OPEN`` (sentence openers), ``EOS`` and ``OTHER`` (the rest: closers' and instructions' words).
    The world's syntax is its sequence of classes, so :func:`syntactic_similarity` compares
    class bigrams, as Giulianelli et al. compare POS bigrams.
    """
    from rl4lmt import world as w

    classes: dict[str, str] = {}

    def put(words, cls):
        for word in words:
            classes.setdefault(word, cls)

    put(["the", "a"], "DET")
    put(["was", "were", "felt", "seemed"], "COP")
    put(["not"], "NEG")
    put(["i"], "PRON")
    put(["and", "but"], "CONJ")
    put([",", ".", ":"], "PUNCT")
    put([w.EOS], "EOS")
    put([a for a in w.ASPECTS], "NOUN")
    put([x for xs in w._INTENS.values() for x in xs] + [x for xs in w._INTENS_POLAR.values() for x in xs], "INT")
    put([x for xs in w._ADJ.values() for x in xs] + [x for xs in w._ADJ_SPECIFIC.values() for x in xs], "ADJ")
    put([x for phrases in w._VERBS.values() for phrase in phrases for x in phrase], "VERB")
    put([x for phrase in w._OPENERS for x in phrase], "OPEN")
    for word in w.TinyReviews().vocab:
        classes.setdefault(word, "OTHER")
    return classes


def _jaccard(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def _check_pair(a, b) -> tuple[list[str], list[str]]:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, str):
            raise TypeError(f"{name} must be a str, got {type(x).__name__}")
    return a.split(), b.split()


def lexical_similarity(a: str, b: str) -> float:
    """Unigram overlap: the Jaccard similarity :math:`|U_a \\cap U_b| / |U_a \\cup U_b|` of the word sets.

    Taught in chapter 8, "Production variability".
    """
    wa, wb = _check_pair(a, b)
    return _jaccard(set(wa), set(wb))


_CLASSES: dict[str, str] | None = None


def syntactic_similarity(a: str, b: str) -> float:
    """Word-class bigram overlap: the Jaccard similarity of the sets of class bigrams (:func:`word_classes`).

    Taught in chapter 8, "Production variability".
    """
    global _CLASSES
    wa, wb = _check_pair(a, b)
    if _CLASSES is None:
        _CLASSES = word_classes()

    def bigrams(words):
        tags = [_CLASSES.get(x, "OTHER") for x in words]
        return set(zip(tags, tags[1:]))

    return _jaccard(bigrams(wa), bigrams(wb))


def sentiment_similarity(a: str, b: str, world) -> float:
    """Semantic similarity by meaning: :math:`1 - |E[s \\mid a] - E[s \\mid b]| / 2` with the world's gold sentiment.

    1 for two reviews of the same (expected) sentiment, 0 for a -1 and a +1 review.

    Taught in chapter 8, "Production variability".
    """
    _check_pair(a, b)
    return 1.0 - abs(world.sentiment(a) - world.sentiment(b)) / 2.0


def topic_similarity(a: str, b: str) -> float:
    """Semantic similarity by topic: the Jaccard similarity of the sets of aspects the reviews talk about.

    Taught in chapter 8, "Production variability".
    """
    from rl4lmt.world import ASPECTS

    wa, wb = _check_pair(a, b)
    aspects = set(ASPECTS)
    return _jaccard(set(wa) & aspects, set(wb) & aspects)


def production_variability(productions: Sequence[Sequence[str]], similarity: Callable[[str, str], float]) -> np.ndarray:
    """Per prompt, the mean pairwise *distance* :math:`1 - \\mathrm{sim}(y_i, y_j)` between its productions.

    For prompt :math:`x` with productions :math:`y_1..y_n`,
    :math:`\\mu(x) = \\binom n2^{-1} \\sum_{i<j} (1 - \\mathrm{sim}(y_i, y_j))`. Computed for the
    world's productions (the "humans") and a model's, :math:`\\mu_{model}(x) - \\mu_{human}(x) > 0`
    says the model varies more than the truth for that prompt, ``< 0`` less.

    Args:
        productions: one list of ``n >= 2`` texts per prompt.
        similarity: a function of two texts, e.g. :func:`lexical_similarity`.

    Returns:
        float64 array ``(num_prompts,)``.

    Taught in chapter 8, "Production variability".
    """
    if not callable(similarity):
        raise TypeError("similarity must be a function of two texts")
    if isinstance(productions, str) or len(productions) == 0:
        raise ValueError("productions must be a non-empty list of lists of texts")
    out = []
    for i, ys in enumerate(productions):
        if isinstance(ys, str) or len(ys) < 2:
            raise ValueError(f"productions[{i}] must hold at least 2 texts")
        out.append(np.mean([1.0 - similarity(a, b) for a, b in combinations(ys, 2)]))
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# 6. Evaluating RL across seeds: IQM, stratified bootstrap, performance profiles
# --------------------------------------------------------------------------------------------


def _as_scores(scores) -> np.ndarray:
    arr = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]  # one task
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"scores must have shape (runs, tasks) or (runs,), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite")
    return arr


def iqm(scores) -> float:
    """Interquartile mean: the mean of the middle 50 % of all runs' scores, pooled over tasks.

    Sort the ``runs * tasks`` scores, drop the ``floor(N/4)`` lowest and highest, average the
    rest (``scipy.stats.trim_mean(scores, 0.25, axis=None)``, as rliable's ``aggregate_iqm``).
    Less noisy than the median, less sensitive to outlier runs than the mean (Agarwal et al., 2021).

    Args:
        scores: ``(runs, tasks)`` or ``(runs,)`` array.

    Taught in chapter 8, "Evaluating RL honestly".
    """
    flat = np.sort(_as_scores(scores).reshape(-1))
    cut = int(0.25 * flat.size)
    return float(flat[cut: flat.size - cut].mean())


def stratified_bootstrap_ci(scores, statistic: Callable[[np.ndarray], float] = iqm, reps: int = 2000,
                            confidence: float = 0.95, seed: int | None = None) -> tuple[float, float, float]:
    """Percentile bootstrap interval of an aggregate, resampling runs *within each task*.

    Each replicate draws, for every task independently, ``runs`` runs with replacement from that
    task's runs, and recomputes ``statistic`` on the ``(runs, tasks)`` resample; the interval is
    the :math:`(1 \\pm \\text{confidence})/2` percentiles of the replicates (rliable's
    ``get_interval_estimates`` with its default ``StratifiedBootstrap``, method ``"percentile"``).
    Stratifying keeps every task in every replicate, as the evaluation itself does.

    Returns:
        ``(point_estimate, low, high)``.

    Taught in chapter 8, "Evaluating RL honestly".
    """
    arr = _as_scores(scores)
    if not callable(statistic):
        raise TypeError("statistic must be a function of a (runs, tasks) array")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, got {reps}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    runs, tasks = arr.shape
    cols = np.arange(tasks)[None, :]  # (1, tasks)
    reps_out = np.empty(reps)
    for r in range(reps):
        rows = rng.integers(0, runs, size=(runs, tasks))  # a separate resample of runs per task
        reps_out[r] = statistic(arr[rows, cols])
    alpha = 1 - confidence
    low, high = np.percentile(reps_out, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(statistic(arr)), float(low), float(high)


def performance_profile(scores, taus) -> np.ndarray:
    """Score distribution: for each threshold :math:`\\tau`, the fraction of runs (all tasks pooled) scoring above it.

    :math:`\\hat F(\\tau) = \\frac{1}{N M} \\sum_{n,m} [x_{n,m} > \\tau]` (Agarwal et al., 2021;
    rliable's ``score_distributions``). A curve that lies above another everywhere dominates it
    stochastically -- a stronger statement than any single aggregate.

    Taught in chapter 8, "Evaluating RL honestly".
    """
    arr = _as_scores(scores)
    t = _as_1d("taus", taus)
    return (arr.reshape(-1)[None, :] > t[:, None]).mean(axis=1)


def normalize_scores(scores, random_score, optimal_score) -> np.ndarray:
    """Scores relative to random and optimal play: :math:`(x - x_{random}) / (x_{optimal} - x_{random})`.

    0 is the random policy, 1 the optimal one; ``random_score`` and ``optimal_score`` may be
    scalars or per-task arrays.

    Taught in chapter 8, "Evaluating RL honestly".
    """
    arr = _as_scores(scores)
    lo = np.asarray(random_score, dtype=np.float64)
    hi = np.asarray(optimal_score, dtype=np.float64)
    if np.any(hi == lo):
        raise ValueError("optimal_score must differ from random_score")
    return (arr - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------
# The pipeline's models
# --------------------------------------------------------------------------------------------

PIPELINE = ("tiny-reviews", "tiny-reviews-sft", "tiny-reviews-ppo", "tiny-reviews-dpo")
"""The course's pipeline stages in order: pretrained, SFT, PPO-RLHF, DPO (those that exist)."""


def available_models(names: Sequence[str] = PIPELINE) -> list[str]:
    """The names among ``names`` whose checkpoint ships with this copy of the package (in order).

    A chapter that compares pipeline stages passes ``available_models()`` on, so it shows
    whichever stages have been trained.

    Taught in chapter 8, "Calibration along the pipeline".
    """
    from rl4lmt import zoo

    if isinstance(names, str):
        raise TypeError("names must be a list of model names, not one str")
    return [n for n in names if n in zoo.SHIPPED and (zoo.checkpoint_dir(n) / "model.safetensors").exists()]
