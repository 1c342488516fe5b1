"""Language-model basics (chapter 1): log-probabilities, surprisal, attention, positions, BPE.

Notation (lecture 1). A causal language model maps a prefix :math:`w_{1:n}` to a distribution
over the vocabulary :math:`\\mathcal V`; :math:`P_{LM}(w_{n+1} \\mid w_{1:n})` is the
*next-word probability* and :math:`-\\log P_{LM}(w_{n+1} \\mid w_{1:n})` its *surprisal*.

What lives here, in the order the chapter teaches it:

- scoring: :func:`surprisal`, :func:`cross_entropy`, :func:`perplexity`;
  :func:`shifted_logprobs` (log-prob of each actual next token, from logits) and
  :func:`token_logprobs` (the same, straight from a model, a tokenizer and texts — teacher
  forcing). ``sequence_logprob`` (the log-prob of each complete text, incl. its EOS) is built on
  :func:`token_logprobs`.
- training: :func:`encode_texts`, :func:`teacher_forcing_loss`, :func:`train_teacher_forcing`.
- attention from scratch: :func:`causal_mask`, :func:`padding_mask`, :func:`attention_weights`,
  :func:`attention`, :func:`causal_self_attention`, :func:`split_heads`, :func:`merge_heads`,
  :func:`multi_head_self_attention` (checked against ``torch.nn.functional.
  scaled_dot_product_attention`` and GPT-2's own attention layer in ``tests/test_lm.py``).
- positions: :func:`sinusoidal_positions` (Vaswani et al. 2017).
- the transformer block: :func:`layer_norm`, :func:`gelu_tanh`, :func:`feed_forward`,
  :func:`transformer_block` (pre-LN, residual stream) and :func:`gpt2_forward` (embeddings,
  stacked blocks, final norm, unembedding), checked against transformers' ``GPT2Block`` and
  ``GPT2LMHeadModel`` with the same weights.
- subword tokenization with the ``tokenizers`` library: :func:`train_bpe`, :func:`bpe_merges`,
  :func:`english_text` (a few paragraphs of plain English shipped with the package).

Shapes follow torch's SDPA: ``(batch, heads, time, head_dim)``; boolean masks mean
"True = may attend". Units: every log-probability is a natural log (nats), as in the world and
the other modules; :func:`surprisal` defaults to bits (the lecture's unit: a coin flip is 1 bit)
and :func:`cross_entropy` to nats, each with a ``base`` argument to convert.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

from rl4lmt.utils import check_texts
from rl4lmt.utils import model_device as _model_device  # one device helper for the package

__all__ = [
    "surprisal",
    "cross_entropy",
    "perplexity",
    "shifted_logprobs",
    "TokenLogprobs",
    "encode_texts",
    "token_logprobs",
    "sequence_logprob",
    "teacher_forcing_loss",
    "train_teacher_forcing",
    "causal_mask",
    "padding_mask",
    "attention_weights",
    "attention",
    "causal_self_attention",
    "split_heads",
    "merge_heads",
    "multi_head_self_attention",
    "sinusoidal_positions",
    "train_bpe",
    "bpe_merges",
    "english_text",
    "BlockWeights",
    "layer_norm",
    "gelu_tanh",
    "feed_forward",
    "block_weights",
    "transformer_block",
    "gpt2_forward",
]


# ----------------------------------------------------------------------------------------------
# Surprisal, cross-entropy, perplexity
# ----------------------------------------------------------------------------------------------
def _check_base(base: float) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float, np.floating, np.integer)):
        raise TypeError(f"base must be a number, got {type(base).__name__}")
    if not base > 0 or base == 1 or not math.isfinite(base):
        raise ValueError(f"base must be positive, finite and != 1, got {base}")
    return float(base)


def surprisal(
    p: float | np.ndarray | torch.Tensor, base: float = 2.0, *, log: bool = False
) -> float | np.ndarray | torch.Tensor:
    """Surprisal :math:`-\\log_b p` of probabilities ``p`` (bits for ``base=2``, nats for ``math.e``).

    With ``log=True`` the input is natural-log probabilities :math:`\\ln p` (what models return),
    and the result is :math:`-\\ln p / \\ln b`. Works elementwise on a float, a NumPy array or a
    tensor and returns the same kind. A probability of 0 has infinite surprisal.
    """
    base = _check_base(base)
    if isinstance(p, bool):
        raise TypeError("p must be a probability (float, array or tensor), got bool")
    if isinstance(p, torch.Tensor):
        x = p.double() if not p.is_floating_point() else p
        lib_log = torch.log
    elif isinstance(p, (int, float, np.floating, np.integer, np.ndarray, list, tuple)):
        x = np.asarray(p, dtype=float)
        lib_log = np.log
    else:
        raise TypeError(f"p must be a float, array or tensor, got {type(p).__name__}")
    if bool((x != x).any()):
        raise ValueError("p contains NaN")
    if log:
        if bool((x > 0).any()):
            raise ValueError("p must hold log-probabilities (<= 0) when log=True")
        out = -x / math.log(base)
    else:
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError("p must hold probabilities in [0, 1] (pass log=True for log-probabilities)")
        with np.errstate(divide="ignore"):  # log(0) = -inf on purpose: an impossible event
            out = -lib_log(x) / math.log(base)
    if isinstance(p, torch.Tensor):
        return out
    return float(out) if np.ndim(out) == 0 else out


def _as_logp_and_mask(logp, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (log-probs, mask) and return them as float64 tensors of one shape."""
    if isinstance(logp, torch.Tensor):
        lp = logp.detach().double()
    elif isinstance(logp, (np.ndarray, list, tuple)):
        lp = torch.as_tensor(np.asarray(logp, dtype=float))
    else:
        raise TypeError(f"logp must be a tensor, array or list of log-probabilities, got {type(logp).__name__}")
    if mask is None:
        m = torch.ones_like(lp)
    else:
        m = (mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))).to(lp.device)
        if m.shape != lp.shape:
            raise ValueError(f"mask must have the shape of logp {tuple(lp.shape)}, got {tuple(m.shape)}")
        if bool(((m != 0) & (m != 1)).any()):
            raise ValueError("mask must hold only 0/1 (or False/True)")
        m = m.double()
    if lp.numel() == 0 or m.sum() == 0:
        raise ValueError("logp has no (unmasked) tokens to average over")
    if bool((lp[m.bool()] > 1e-6).any()) or bool(torch.isnan(lp[m.bool()]).any()):
        raise ValueError("logp must hold natural-log probabilities (<= 0, no NaN)")
    return lp, m


def cross_entropy(logp, mask=None, base: float = math.e) -> float:
    """Cross-entropy per token :math:`H = -\\frac{1}{N}\\sum_i \\log P(y_i)` of observed tokens.

    ``logp`` holds the natural-log probabilities the model gave the tokens that actually came
    (e.g. from :func:`token_logprobs`); ``mask`` (same shape, 1 = real token) leaves padding out.
    The average runs over *all* unmasked tokens of the batch (token-weighted, like the world's
    ``cross_entropy``). In nats per token by default (the unit of every log-probability in the
    package: natural logs); ``base=2`` gives bits per token.
    """
    base = _check_base(base)
    lp, m = _as_logp_and_mask(logp, mask)
    nats = -(lp * m).sum() / m.sum()
    return float(nats) / math.log(base)


def perplexity(logp, mask=None) -> float:
    """Perplexity :math:`\\mathrm{PPL} = \\exp(H)`, the exponentiated per-token cross-entropy.

    A model with perplexity :math:`k` is on average as unsure as a uniform choice among
    :math:`k` tokens. Arguments as in :func:`cross_entropy`.
    """
    return math.exp(cross_entropy(logp, mask))


# ----------------------------------------------------------------------------------------------
# Per-token log-probabilities (teacher forcing)
# ----------------------------------------------------------------------------------------------
def shifted_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each actual next token: ``out[b, t] = log P(x_{t+1} | x_{<=t})``.

    ``logits`` ``(batch, time, vocab)`` from a causal LM run on ``input_ids`` ``(batch, time)``;
    the result has shape ``(batch, time - 1)``: position ``t`` predicts token ``t + 1`` (the shift
    of teacher forcing), so the first token is context only and is never scored.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a (batch, time, vocab) tensor, got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, time) tensor, "
                         f"got {getattr(input_ids, 'shape', type(input_ids))}")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"input_ids shape {tuple(input_ids.shape)} does not match logits {tuple(logits.shape[:2])}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predictions for positions 1..T-1
    targets = input_ids[:, 1:].long().to(logits.device)  # shift: token t+1 is position t's target
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class TokenLogprobs(NamedTuple):
    """Per-token log-probabilities of texts (right-padded, ``(batch, time - 1)`` each).

    ``logprobs[b, t] = log P(targets[b, t] | tokens before it)``; ``mask`` is 1 on real targets
    and 0 on padding (where ``logprobs`` is 0.0, so ``logprobs.sum(-1)`` is the text's log-prob).
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor


def encode_texts(tokenizer, texts: Sequence[str], *, add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``texts``, right-padded: ``(input_ids, attention_mask)``, both ``(batch, time)``.

    Uses the tokenizer's own special-token rule (the course's word-level tokenizer prepends the
    BOS ``<eos>``) and, with ``add_eos=True``, appends the EOS id so that the end of the text is
    an event the model must predict. Padding uses the pad id (EOS if there is none) and is
    always on the right, so position ids stay 0, 1, 2, ... for every real token.
    """
    texts = check_texts(texts)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is None:
        raise ValueError("tokenizer has no eos_token_id; pass add_eos=False")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = eos if pad is None else pad
    pad = 0 if pad is None else pad
    rows = [list(tokenizer(t)["input_ids"]) + ([eos] if add_eos else []) for t in texts]
    if min(len(r) for r in rows) < 2:
        raise ValueError("every text must give at least 2 tokens (a context token and one to predict)")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
    return input_ids, attention_mask


def token_logprobs(model, tokenizer, texts: Sequence[str], *, add_eos: bool = True) -> TokenLogprobs:
    """Teacher-forced log-prob of every actual next token of ``texts`` under a causal LM.

    The true token sequence goes in whole (teacher forcing), one forward pass gives the logits,
    and :func:`shifted_logprobs` picks :math:`\\log P_{LM}(w_{t+1} \\mid w_{1:t})` for each
    position. With the course's word-level tokenizer (BOS prepended, ``add_eos=True``) the
    scored targets are exactly the world's events: ``len(text.split()) + 1`` per text, and
    ``result.logprobs.sum(-1)`` is the text's log-probability. Gradients flow unless the caller
    wraps the call in ``torch.no_grad()``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_ids, attention_mask = encode_texts(tokenizer, texts, add_eos=add_eos)
    device = _model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logp = shifted_logprobs(logits, input_ids)
    mask = attention_mask[:, 1:]  # a target is real iff its own token is (right padding)
    return TokenLogprobs(logp * mask, mask, input_ids[:, 1:])


def sequence_logprob(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    r"""Exact log-probability under the model of each *complete* text, end-of-text included.

    :math:`\log P_{LM}(x) = \sum_{t=1}^{T+1} \log P_{LM}(w_t \mid w_{<t})` with
    :math:`w_{T+1}` = EOS: the same event space as ``TinyReviews.logprob`` (``len(text.split()) + 1``
    prediction events per text, the BOS is given, not predicted). Returns a float tensor of shape
    ``(len(texts),)`` on the CPU; no gradients (use :func:`token_logprobs` to train).
    """
    with torch.no_grad():
        out = token_logprobs(model, tokenizer, texts, add_eos=True)
    return out.logprobs.sum(-1).double().cpu()


# ----------------------------------------------------------------------------------------------
# Training with teacher forcing
# ----------------------------------------------------------------------------------------------
def teacher_forcing_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy :math:`L_\\theta = -\\frac{1}{N}\\sum_{j,i}\\log P(y_{ji})`.

    The average runs over all real target tokens of the batch (``attention_mask`` 1), which is
    what transformers computes with ``labels=input_ids`` and ``-100`` on padding. (The lecture's
    :math:`\\frac1b\\sum_j\\frac1{n_j}\\sum_i` weighs each sequence equally instead; both are
    fine, the token-weighted one is the standard.)
    """
    logp = shifted_logprobs(logits, input_ids)
    if attention_mask is None:
        return -logp.mean()
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    m = attention_mask[:, 1:].to(logp.device, logp.dtype)
    if m.sum() == 0:
        raise ValueError("attention_mask leaves no target token to train on")
    return -(logp * m).sum() / m.sum()


def train_teacher_forcing(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    max_grad_norm: float | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    desc: str = "teacher forcing",
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train a causal LM by teacher forcing; return the training loss (nats/token) of every step.

    Each step draws a random minibatch of rows, runs the true sequences through the model, and
    takes one AdamW step on :func:`teacher_forcing_loss` (gradient descent
    :math:`\\theta \\leftarrow \\theta - \\gamma\\nabla L_\\theta`, with Adam's per-parameter step
    sizes). The data order is fixed by ``seed`` (or drawn from ``generator``, a CPU
    ``torch.Generator``, when given). The package's one teacher-forcing loop: the
    shipped model's recipe (``rl4lmt.zoo.train``) runs it with its own ``optimizer`` (weight
    decay on matrices only), an ``lr_schedule`` (step -> learning rate, set before each step)
    and gradient clipping at ``max_grad_norm``; ``on_step(step, attention_mask, loss)`` sees
    each batch (e.g. to count tokens).
    """
    from tqdm.auto import tqdm

    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids and attention_mask must be (batch, time) tensors of one shape")
    for name, val in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    device = _model_device(model)
    # the data order depends on the seed (or the given generator) only
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    opt = torch.optim.AdamW(model.parameters(), lr=lr) if optimizer is None else optimizer
    model.train()
    losses = []
    bar = tqdm(range(steps), disable=not progress, desc=desc, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, input_ids.shape[0], (batch_size,), generator=gen)
        ids, am = input_ids[idx].to(device), attention_mask[idx].to(device)
        width = int(am.sum(1).max())  # trim the all-padding columns: same loss, less compute
        ids, am = ids[:, :width], am[:, :width]
        if lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr_schedule(step)
        loss = teacher_forcing_loss(model(input_ids=ids, attention_mask=am).logits, ids, am)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, am, loss)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# Self-attention from scratch
# ----------------------------------------------------------------------------------------------
def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(n, n)`` mask, True where query ``i`` may attend to key ``j``: :math:`j \\le i`.

    The lower triangle incl. the diagonal: a token sees itself and its past, never its future
    (the lecture's :math:`-\\infty` entries are the False ones above the diagonal).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return torch.ones(int(n), int(n), dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a tokenizer's ``(batch, time)`` 0/1 attention mask into a ``(batch, 1, 1, time)`` bool mask.

    Broadcast over heads and queries, it hides the padded *keys* from every query; combine it
    with :func:`causal_mask` by logical AND.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be a (batch, time) tensor, "
                         f"got {getattr(attention_mask, 'shape', type(attention_mask))}")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0/1 (or False/True)")
    return attention_mask.bool()[:, None, None, :]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    for name, x in (("q", q), ("k", k)) + ((("v", v),) if v is not None else ()):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (..., time, dim), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last (head) dimension, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q and k must share the leading (batch, heads) dims, "
                         f"got {tuple(q.shape[:-2])} and {tuple(k.shape[:-2])}")
    if v is not None and (v.shape[:-2] != k.shape[:-2] or v.shape[-2] != k.shape[-2]):
        raise ValueError(f"v must have k's leading dims and length {tuple(k.shape[:-1])}, got {tuple(v.shape[:-1])}")


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None, *, is_causal: bool = False
) -> torch.Tensor:
    """Attention weights :math:`\\alpha_{ij} = \\mathrm{softmax}_j(q_i\\cdot k_j/\\sqrt{d})` over allowed keys.

    ``q`` ``(..., T, d)``, ``k`` ``(..., S, d)``; returns ``(..., T, S)`` with rows summing to 1.
    ``attn_mask`` follows torch's SDPA: boolean (True = may attend) or float (added to the
    scores), broadcastable to ``(..., T, S)``. ``is_causal`` adds the causal mask (keys
    :math:`j \\le i`, aligned top-left as in SDPA). A query with no allowed key gets all-zero
    weights (as SDPA does), not NaN.
    """
    _check_qkv(q, k)
    T, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., T, S); 1/sqrt(d) keeps the softmax from saturating
    if is_causal:
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor, got {type(attn_mask).__name__}")
        try:
            torch.broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"the scores {tuple(scores.shape)}") from None
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask.to(q.device), float("-inf"))  # hidden keys get weight exp(-inf) = 0
        elif attn_mask.is_floating_point():
            scores = scores + attn_mask.to(q.device, scores.dtype)
        else:
            raise TypeError(f"attn_mask must be bool or float, got {attn_mask.dtype}")
    # A row whose every key is hidden would be softmax(-inf, ..., -inf) = NaN; make it zeros.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1)
    return weights.masked_fill(empty, 0.0)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, *, is_causal: bool = False
) -> torch.Tensor:
    """Scaled dot-product attention :math:`\\mathrm{softmax}(QK^\\top/\\sqrt{d} + M)\\,V`.

    Same arguments and result as ``torch.nn.functional.scaled_dot_product_attention`` (without
    dropout), except that a mask *and* ``is_causal`` may be given together (they are ANDed).
    Output ``(..., T, d_v)``: each query's weighted average :math:`y_i = \\sum_j \\alpha_{ij} v_j`.
    """
    _check_qkv(q, k, v)
    return attention_weights(q, k, attn_mask, is_causal=is_causal) @ v


def causal_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal self-attention :math:`y_i = \\sum_{j \\le i} \\alpha_{ij} v_j` on ``(batch, heads, time, dim)``.

    Equal to ``scaled_dot_product_attention(q, k, v, is_causal=True)``; an extra ``attn_mask``
    (e.g. :func:`padding_mask`, bool True = may attend, or float additive) is combined with the
    causal mask. Self-attention: queries, keys and values come from the same ``time`` positions.
    """
    _check_qkv(q, k, v)
    if q.dim() != 4:
        raise ValueError(f"q must have shape (batch, heads, time, dim), got {tuple(q.shape)}")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"self-attention needs as many keys as queries: q has {q.shape[-2]}, k has {k.shape[-2]}")
    return attention(q, k, v, attn_mask, is_causal=True)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(batch, time, n_heads * head_dim)`` -> ``(batch, n_heads, time, head_dim)``.

    Each head works on its own slice of the feature dimension.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, time, dim) tensor, got {getattr(x, 'shape', type(x))}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or x.shape[-1] % n_heads:
        raise ValueError(f"n_heads must be a positive int dividing dim={x.shape[-1]}, got {n_heads!r}")
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, nh, T, hs)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(batch, n_heads, time, head_dim)`` -> ``(batch, time, n_heads * head_dim)``; inverse of :func:`split_heads`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (batch, heads, time, head_dim) tensor, got {getattr(x, 'shape', type(x))}")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C): heads side by side


def multi_head_self_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    n_heads: int,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head causal self-attention, :math:`\\mathrm{Concat}(\\mathrm{head}_1..\\mathrm{head}_h)W^O`.

    ``x`` ``(batch, time, dim)``. Projections use GPT-2's layout (``x @ W + b``):
    ``w_qkv`` ``(dim, 3 * dim)`` stacks :math:`W^Q, W^K, W^V` side by side, ``w_out``
    ``(dim, dim)``. Each head runs :func:`causal_self_attention` on its slice; ``attn_mask``
    (e.g. :func:`padding_mask`) is passed on. Returns ``(batch, time, dim)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, time, dim) tensor, got {getattr(x, 'shape', type(x))}")
    C = x.shape[-1]
    if w_qkv.shape != (C, 3 * C):
        raise ValueError(f"w_qkv must have shape ({C}, {3 * C}), got {tuple(w_qkv.shape)}")
    if w_out.shape != (C, C):
        raise ValueError(f"w_out must have shape ({C}, {C}), got {tuple(w_out.shape)}")
    qkv = x @ w_qkv + (b_qkv if b_qkv is not None else 0)  # (B, T, 3C)
    q, k, v = (split_heads(t, n_heads) for t in qkv.split(C, dim=-1))  # each (B, nh, T, hs)
    y = merge_heads(causal_self_attention(q, k, v, attn_mask))  # (B, T, C)
    return y @ w_out + (b_out if b_out is not None else 0)  # mix the heads' outputs


# ----------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------
def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings of Vaswani et al. (2017), shape ``(n_positions, dim)``.

    :math:`PE[t, 2k] = \\sin(\\omega_k t)`, :math:`PE[t, 2k+1] = \\cos(\\omega_k t)` with
    :math:`\\omega_k = 1/10000^{2k/d}`: sine and cosine interleaved, frequencies falling
    geometrically from 1 to about 1/10000 along the feature dimension.
    """
    for name, val in (("n_positions", n_positions), ("dim", dim)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if dim % 2:
        raise ValueError(f"dim must be even (sine/cosine pairs), got {dim}")
    t = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n, 1)
    omega = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (d/2,): 2k/d for k = 0..d/2-1
    pe = torch.empty(n_positions, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(t * omega)
    pe[:, 1::2] = torch.cos(t * omega)
    return pe.float()


# ----------------------------------------------------------------------------------------------
# Subword tokenization (BPE with the tokenizers library)
# ----------------------------------------------------------------------------------------------
def english_text() -> str:
    """A few paragraphs of plain English (about 3 KB) shipped with the package, for BPE demos."""
    return (resources.files("rl4lmt") / "data" / "english.txt").read_text(encoding="utf-8")


def train_bpe(texts: Sequence[str], vocab_size: int, *, min_frequency: int = 2, lowercase: bool = True):
    """Train a byte-pair-encoding tokenizer (Sennrich et al. 2016) with the ``tokenizers`` library.

    BPE starts from single characters and repeatedly merges the most frequent adjacent pair
    into a new token until the vocabulary has ``vocab_size`` entries. Words are marked with a
    leading ``▁`` (SentencePiece's *Metaspace*), so the pieces show where words begin and
    decoding restores the spaces. Returns a ``tokenizers.Tokenizer`` (special token ``<unk>``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = check_texts(texts)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive int, got {min_frequency!r}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # "▁" marks the start of each word
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=["<unk>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bpe_merges(tokenizer) -> list[tuple[str, str]]:
    """The merge rules of a trained BPE ``tokenizers.Tokenizer``, in the order they were learned."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer must hold a BPE model, got {model.get('type')!r}")
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


# ----------------------------------------------------------------------------------------------
# The transformer block: layer norm, residual stream, feed-forward sub-layer, stacking
# ----------------------------------------------------------------------------------------------
class BlockWeights(NamedTuple):
    """The weights of one pre-LN transformer block in GPT-2's layout (``x @ W + b``).

    ``ln1_*``/``ln2_*`` ``(dim,)``; ``w_qkv`` ``(dim, 3 dim)``, ``w_attn_out`` ``(dim, dim)``;
    ``w_fc`` ``(dim, 4 dim)``, ``w_mlp_out`` ``(4 dim, dim)`` (biases to match). :func:`block_weights`
    reads them off a transformers ``GPT2Block``.
    """

    ln1_weight: torch.Tensor
    ln1_bias: torch.Tensor
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor
    w_attn_out: torch.Tensor
    b_attn_out: torch.Tensor
    ln2_weight: torch.Tensor
    ln2_bias: torch.Tensor
    w_fc: torch.Tensor
    b_fc: torch.Tensor
    w_mlp_out: torch.Tensor
    b_mlp_out: torch.Tensor


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer normalisation,
    :math:`\\mathrm{LN}(x) = \\gamma \\odot \\frac{x - \\mu(x)}{\\sqrt{\\sigma^2(x) + \\epsilon}} + \\beta`.

    Mean and (biased) variance are taken over the last dimension, separately for every token:
    each token's vector becomes a z-score, then gets a learned scale ``weight`` (:math:`\\gamma`)
    and shift ``bias`` (:math:`\\beta`) per feature (Ba et al., 2016). Same as
    ``torch.nn.functional.layer_norm``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor with a feature dimension, got {getattr(x, 'shape', type(x))}")
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or t.shape != x.shape[-1:]:
            raise ValueError(f"{name} must be a tensor of shape ({x.shape[-1]},), got {getattr(t, 'shape', type(t))}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1): one mean per token
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as torch and GPT-2 use
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh approximation :math:`\\tfrac12 x (1 + \\tanh(\\sqrt{2/\\pi}(x + 0.044715 x^3)))`."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def feed_forward(
    x: torch.Tensor, w_fc: torch.Tensor, b_fc: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor
) -> torch.Tensor:
    """The position-wise feed-forward sub-layer, :math:`\\mathrm{FFN}(x) = \\mathrm{GELU}(x W_1 + b_1) W_2 + b_2`.

    The same two-layer MLP is applied to every token separately (no mixing across positions:
    that is attention's job); the hidden layer is usually 4 times wider than the model.
    """
    if (not isinstance(x, torch.Tensor) or x.dim() < 1 or w_fc.shape[0] != x.shape[-1]
            or w_out.shape != (w_fc.shape[1], x.shape[-1])):
        raise ValueError(f"x (..., dim), w_fc (dim, hidden) and w_out (hidden, dim) do not fit: "
                         f"{getattr(x, 'shape', None)}, {tuple(w_fc.shape)}, {tuple(w_out.shape)}")
    return gelu_tanh(x @ w_fc + b_fc) @ w_out + b_out


def block_weights(block) -> BlockWeights:
    """Read the weights of a transformers ``GPT2Block`` (``model.transformer.h[i]``) into :class:`BlockWeights`."""
    try:
        return BlockWeights(
            block.ln_1.weight, block.ln_1.bias, block.attn.c_attn.weight, block.attn.c_attn.bias,
            block.attn.c_proj.weight, block.attn.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
            block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias,
        )
    except AttributeError as err:
        raise TypeError(f"block must be a GPT-2 block (ln_1, attn, ln_2, mlp), got {type(block).__name__}") from err


def transformer_block(
    x: torch.Tensor, weights: BlockWeights, n_heads: int, attn_mask: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """One pre-LN transformer block, as in GPT-2 (Radford et al., 2019):

    .. math::  h = x + \\mathrm{MHA}(\\mathrm{LN}_1(x)), \\qquad y = h + \\mathrm{FFN}(\\mathrm{LN}_2(h)).

    ``x`` ``(batch, time, dim)`` is the *residual stream*: each sub-layer reads a normalised copy
    of it and *adds* its output back, so information (and gradient) can pass straight through
    every block. Attention is causal (:func:`multi_head_self_attention`; ``attn_mask`` as
    there). Returns ``(batch, time, dim)``.
    """
    if not isinstance(weights, BlockWeights):
        raise TypeError(f"weights must be a BlockWeights (see block_weights), got {type(weights).__name__}")
    w = weights
    h = x + multi_head_self_attention(layer_norm(x, w.ln1_weight, w.ln1_bias, eps), w.w_qkv, w.b_qkv,
                                      w.w_attn_out, w.b_attn_out, n_heads, attn_mask)  # attention writes to the stream
    return h + feed_forward(layer_norm(h, w.ln2_weight, w.ln2_bias, eps), w.w_fc, w.b_fc, w.w_mlp_out, w.b_mlp_out)


def gpt2_forward(model, input_ids: torch.Tensor, *, return_hidden: bool = False):
    """GPT-2's forward pass written out with :func:`transformer_block`: logits ``(batch, time, vocab)``.

    :math:`x_0 = E[w_t] + P[t]` (token plus learned position embedding), then
    :math:`x_\\ell = \\mathrm{Block}_\\ell(x_{\\ell-1})` for every block, a final layer norm, and
    the (tied) unembedding :math:`\\mathrm{logits} = \\mathrm{LN}_f(x_L) E^\\top`. With
    ``return_hidden=True`` also returns the residual stream after the embedding and after each
    block (a list of ``L + 1`` tensors), which is what the logit lens reads. No padding: one
    text per row, all of the same length.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (batch, time) long tensor, "
                         f"got {getattr(input_ids, 'shape', type(input_ids))}")
    tr = getattr(model, "transformer", None)
    if tr is None or not hasattr(tr, "wte"):
        raise TypeError(f"model must be a GPT2LMHeadModel, got {type(model).__name__}")
    input_ids = input_ids.to(_model_device(model))
    cfg = model.config
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    x = tr.wte(input_ids) + tr.wpe(positions)  # (B, T, C): the residual stream starts here
    hidden = [x]
    for block in tr.h:
        x = transformer_block(x, block_weights(block), cfg.n_head, eps=cfg.layer_norm_epsilon)
        hidden.append(x)
    logits = model.lm_head(layer_norm(x, tr.ln_f.weight, tr.ln_f.bias, cfg.layer_norm_epsilon))
    return (logits, hidden) if return_hidden else logits
