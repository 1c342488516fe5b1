"""Decoding: turning a language model's next-token distributions into text (taught in chapter 2).

A causal language model gives, for a prefix :math:`w_{1:i}`, the next-token distribution
:math:`P(w_{i+1} \\mid w_{1:i}) = \\mathrm{softmax}(z)` over the vocabulary, where :math:`z` are the
logits. A *decoding strategy* decides which token to append:

- greedy decoding: :math:`w_{i+1} = \\arg\\max_w P(w \\mid w_{1:i})`;
- ancestral sampling: :math:`w_{i+1} \\sim P(\\cdot \\mid w_{1:i})`, optionally after reshaping the
  distribution with a temperature, a top-k or a top-p (nucleus) filter
  (Fan et al., 2018; Holtzman et al., 2020);
- beam search: keep the ``num_beams`` best prefixes by summed log-probability and return the best
  finished one, scored :math:`\\sum_t \\log P(w_t \\mid w_{<t}) / L^{\\alpha}` (Wu et al., 2016).

Every function here is written to be read, works on a batch, and reuses the model's key/value
cache so that each step feeds only the newest token. Each one is tested against the library
version it re-implements: transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper`` and ``GenerationMixin.generate`` (greedy, sampling and beam search).

``exact_top_sequences`` is the odd one out: it finds the truly most probable complete sequences
of any next-token distribution (a best-first search), which lets the chapter measure how far
greedy and beam search land from the mode. ``distinct_n`` measures the diversity of a sample.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from rl4lmt.utils import best_first_search, check_generator, model_device

__all__ = [
    "temperature_scale",
    "top_k_filter",
    "top_p_filter",
    "typical_filter",
    "greedy",
    "sample",
    "beam_search",
    "exact_top_sequences",
    "distinct_n",
]

# --------------------------------------------------------------------------------------------
# Input checks (every public function rejects bad input with a message naming the argument)
# --------------------------------------------------------------------------------------------


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_mass(name: str, value, meaning: str) -> None:
    """A probability mass in (0, 1]: TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (0 < value <= 1):
        raise ValueError(f"{name} ({meaning}) must be in (0, 1], got {value}")


def _check_input_ids(input_ids: torch.Tensor) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids must be a LongTensor (dtype torch.long), got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must have shape (batch, prompt_length) with both > 0, got {tuple(input_ids.shape)}"
        )


def _check_token_id(name: str, value, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    return _check_int(name, value, 0)


def _on_model_device(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The course's device convention: the prompts go to the model's device (a torch module's)."""
    return input_ids.to(model_device(model)) if isinstance(model, torch.nn.Module) else input_ids


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


# --------------------------------------------------------------------------------------------
# Logits warpers: pure functions on the logits of one step, shape (..., vocab)
# --------------------------------------------------------------------------------------------


def temperature_scale(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide the logits by the temperature: :math:`\\mathrm{softmax}(z / t)`.

    ``t < 1`` sharpens the distribution towards the argmax (``t -> 0`` is greedy decoding),
    ``t > 1`` flattens it towards uniform, ``t = 1`` leaves it unchanged. Same result as
    transformers' ``TemperatureLogitsWarper(t)``.

    Args:
        logits: float tensor of shape ``(..., vocab)``.
        t: the temperature, ``t > 0``.

    Returns:
        A new tensor ``logits / t`` of the same shape.

    Taught in chapter 2, "Temperature".
    """
    _check_logits(logits)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float, got {type(t).__name__}")
    if not (t > 0) or math.isinf(t):
        raise ValueError(f"t (the temperature) must be a finite float > 0, got {t}")
    return logits / t


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf``.

    Sampling then draws from :math:`P(w) / \\sum_{w' \\in V_k} P(w')` for :math:`w \\in V_k`, the k most
    likely tokens (Fan et al., 2018). Every token tied with the k-th largest logit is kept too,
    so a row may keep more than ``k`` tokens when there are ties; ``k`` larger than the vocabulary
    keeps everything. Same result as transformers' ``TopKLogitsWarper(k)``.

    Args:
        logits: float tensor of shape ``(..., vocab)``.
        k: how many tokens to keep, ``k >= 1``.

    Returns:
        A new tensor of the same shape, ``-inf`` where a token is filtered out.

    Taught in chapter 2, "Top-k and top-p".
    """
    _check_logits(logits)
    _check_int("k", k, 1)
    k = min(k, logits.shape[-1])  # k beyond the vocabulary keeps every token
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))  # ties with the k-th survive


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose probability sums to ``>= p``.

    With the tokens sorted by probability, :math:`V_p` is the shortest head with
    :math:`\\sum_{w \\in V_p} P(w) \\ge p` (Holtzman et al., 2020); everything outside is set to
    ``-inf``. At least one token (the most probable) always survives, and ``p = 1`` keeps every
    token of non-zero probability. Same result as transformers' ``TopPLogitsWarper(p)``, ties
    included, because it uses the same computation: sort *ascending*, and drop the tokens whose
    cumulative probability from the bottom is ``<= 1 - p`` (the tail that can go without the
    kept mass falling under ``p``).

    Args:
        logits: float tensor of shape ``(..., vocab)``.
        p: the nucleus mass, ``0 < p <= 1``.

    Returns:
        A new tensor of the same shape, ``-inf`` where a token is filtered out.

    Taught in chapter 2, "Top-k and top-p".
    """
    _check_logits(logits)
    _check_mass("p", p, "the nucleus mass")
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)  # least likely first
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # mass of this token and all below it
    drop_sorted = tail_mass <= 1 - p  # the tail we can drop and still keep >= p
    drop_sorted[..., -1] = False  # always keep the most probable token
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def typical_filter(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical filter: keep the tokens whose surprisal is closest to the entropy, up to mass ``mass``.

    With :math:`H = -\\sum_w P(w) \\log P(w)` the entropy of the next-token distribution, rank the
    tokens by :math:`|-\\log P(w) - H|` (how far each token's surprisal is from the expected one)
    and keep the shortest such ranked head whose probability sums to ``>= mass`` (Meister et al.,
    2023). Unlike top-p, the most probable token may be dropped when it is much *less*
    surprising than typical. Every token tied with the last kept score is kept too, and at least
    one token survives. Same result as transformers' ``TypicalLogitsWarper(mass)``, ties
    included, because it uses the same computation; ``mass = 1`` keeps every token.

    Args:
        logits: float tensor of shape ``(..., vocab)``.
        mass: the typical mass, ``0 < mass <= 1``.

    Returns:
        A new tensor of the same shape, ``-inf`` where a token is filtered out.

    Taught in chapter 2 (locally typical sampling); used in chapter 8, "Production variability".
    """
    _check_logits(logits)
    _check_mass("mass", mass, "the typical mass")
    if mass == 1:
        return logits.clone()  # keep all: a float cumsum can reach 1 before the last token
    logp = logits.log_softmax(dim=-1)  # (..., V)
    entropy = -(logp * logp.exp()).nansum(dim=-1, keepdim=True)  # (..., 1); 0 * -inf terms are nan
    distance = (-logp - entropy).abs()  # (..., V): |surprisal - H|
    sorted_dist, sorted_idx = torch.sort(distance, dim=-1)  # most typical first
    head_mass = logits.gather(-1, sorted_idx).softmax(dim=-1).cumsum(dim=-1)  # (..., V)
    last = (head_mass < mass).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # last kept rank
    drop_sorted = sorted_dist > sorted_dist.gather(-1, last)  # ties with the last kept score survive
    drop_sorted[..., 0] = False  # always keep the most typical token
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


# --------------------------------------------------------------------------------------------
# One decoding step with the KV cache
# --------------------------------------------------------------------------------------------


def _next_logits(model, ids: torch.Tensor, past):
    """Run the model on the new tokens only (the cache holds the rest); return last logits and cache."""
    new_tokens = ids if past is None else ids[:, -1:]  # first call: the whole prompt ("prefill")
    # every position is attended to (rows are never left-padded; padding after an EOS is ignored
    # anyway): an explicit mask, as generate passes one, also tells the model the padding is wanted
    mask = torch.ones_like(ids)  # (B, T): cached positions + the new one
    out = model(input_ids=new_tokens, attention_mask=mask, past_key_values=past, use_cache=True)
    return out.logits[:, -1, :].float(), out.past_key_values  # (B, V), cache


def _decode_loop(model, input_ids, max_new_tokens, choose, eos_token_id, pad_token_id) -> torch.Tensor:
    """The loop greedy decoding and sampling share: choose a token per row, append, stop at EOS."""
    ids, past = input_ids, None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # (B,)
    for _ in range(max_new_tokens):
        logits, past = _next_logits(model, ids, past)  # (B, V)
        next_token = choose(logits)  # (B,)
        if eos_token_id is not None:
            # rows that already ended get padding, as generate does
            next_token = torch.where(finished, torch.full_like(next_token, pad_token_id), next_token)
            finished = finished | (next_token == eos_token_id)
        ids = torch.cat([ids, next_token[:, None]], dim=1)  # (B, T + 1)
        if finished.all():
            break  # every row has produced its EOS
    return ids


@torch.no_grad()
def greedy(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> torch.LongTensor:
    """Greedy decoding: append :math:`w_{i+1} = \\arg\\max_w P(w \\mid w_{1:i})` until EOS or the budget.

    Identical to ``model.generate(input_ids, do_sample=False, num_beams=1, max_new_tokens=...)``:
    a row that has produced ``eos_token_id`` is padded with ``pad_token_id`` (default: the EOS id)
    and the loop stops as soon as every row has ended.

    Args:
        model: a causal LM (e.g. ``GPT2LMHeadModel``) returning ``.logits`` and ``.past_key_values``.
        input_ids: prompts of shape ``(batch, prompt_length)`` (all of the same length, no padding).
        max_new_tokens: how many tokens to generate at most, ``>= 1``.
        eos_token_id: the end-of-sequence id, or ``None`` to always generate ``max_new_tokens``.
        pad_token_id: what to write after a row's EOS (default ``eos_token_id``).

    Returns:
        LongTensor ``(batch, prompt_length + generated)`` holding the prompts and their continuations.

    Taught in chapter 2, "Greedy decoding".
    """
    _check_input_ids(input_ids)
    _check_int("max_new_tokens", max_new_tokens, 1)
    eos_token_id = _check_token_id("eos_token_id", eos_token_id)
    pad_token_id = eos_token_id if pad_token_id is None else _check_token_id("pad_token_id", pad_token_id)
    input_ids = _on_model_device(model, input_ids)
    return _decode_loop(model, input_ids, max_new_tokens, lambda z: z.argmax(dim=-1), eos_token_id, pad_token_id)


@torch.no_grad()
def sample(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    *,
    typical_p: float | None = None,
) -> torch.LongTensor:
    """Ancestral sampling: draw :math:`w_{i+1} \\sim \\mathrm{softmax}(\\mathrm{filter}(z / t))`, one token at a time.

    Each step (the order matters, and is the one ``generate`` uses):

    1. divide the logits by the temperature (``temperature_scale``);
    2. keep the ``top_k`` most likely tokens (``top_k_filter``), if given;
    3. keep the nucleus of mass ``top_p`` (``top_p_filter``), if given;
    4. keep the locally typical set of mass ``typical_p`` (``typical_filter``), if given;
    5. softmax and draw one token per row with ``torch.multinomial``.

    With the same seed (``torch.manual_seed`` and ``generator=None``) this returns exactly what
    ``model.generate(input_ids, do_sample=True, temperature=..., top_k=top_k or 0, top_p=top_p or 1.0,
    typical_p=typical_p or 1.0)`` returns. Pass a seeded ``torch.Generator`` to keep the draws
    independent of the global RNG.

    Args:
        model: a causal LM returning ``.logits`` and ``.past_key_values``.
        input_ids: prompts of shape ``(batch, prompt_length)``.
        max_new_tokens: how many tokens to generate at most, ``>= 1``.
        temperature: ``t > 0`` (1.0: the model's own distribution).
        top_k: keep only the ``k`` most likely tokens (``None``: no top-k filter).
        top_p: keep only the nucleus of mass ``p`` in (0, 1] (``None``: no top-p filter).
        generator: the random number generator to draw from (``None``: torch's global one), on
            the model's device (a ValueError otherwise).
        eos_token_id: the end-of-sequence id, or ``None`` to always generate ``max_new_tokens``.
        pad_token_id: what to write after a row's EOS (default ``eos_token_id``).
        typical_p: keep only the locally typical set of mass in (0, 1] (``None``: no typical
            filter; Meister et al., 2023), keyword-only.

    Returns:
        LongTensor ``(batch, prompt_length + generated)``.

    Taught in chapter 2, "Sampling".
    """
    _check_input_ids(input_ids)
    _check_int("max_new_tokens", max_new_tokens, 1)
    # validate the settings once, before the loop, on a dummy row
    dummy = torch.zeros(1, 2)
    temperature_scale(dummy, temperature)
    if top_k is not None:
        top_k_filter(dummy, top_k)
    if top_p is not None:
        top_p_filter(dummy, top_p)
    if typical_p is not None:
        typical_filter(dummy, typical_p)
    eos_token_id = _check_token_id("eos_token_id", eos_token_id)
    pad_token_id = eos_token_id if pad_token_id is None else _check_token_id("pad_token_id", pad_token_id)
    input_ids = _on_model_device(model, input_ids)
    check_generator(generator, input_ids.device)  # the generator must draw where the model computes

    def choose(logits: torch.Tensor) -> torch.Tensor:
        if temperature != 1.0:
            logits = temperature_scale(logits, temperature)  # 1. temperature first, filters after
        if top_k is not None:
            logits = top_k_filter(logits, top_k)  # 2. top-k
        if top_p is not None and top_p < 1.0:
            logits = top_p_filter(logits, top_p)  # 3. top-p on the already tempered distribution
        if typical_p is not None and typical_p < 1.0:
            logits = typical_filter(logits, typical_p)  # 4. typical set, after the other filters
        probs = logits.softmax(dim=-1)  # 5. filtered tokens get probability exactly 0
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)

    return _decode_loop(model, input_ids, max_new_tokens, choose, eos_token_id, pad_token_id)


@torch.no_grad()
def beam_search(
    model,
    input_ids: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    num_return_sequences: int = 1,
) -> torch.LongTensor:
    """Beam search: the ``num_beams`` best prefixes by log-probability, expanded one token at a time.

    A finished hypothesis :math:`w_{1:L}` (its EOS included, prompt excluded) is scored

    .. math:: s(w) = \\frac{\\sum_{t=1}^{L} \\log P(w_t \\mid \\text{prompt}, w_{<t})}{L^{\\alpha}},

    with :math:`\\alpha` = ``length_penalty`` (Wu et al., 2016): ``alpha > 0`` favours longer
    outputs, ``alpha = 0`` ranks by total log-probability. Each step:

    1. every running beam proposes every token; candidates are ranked by their summed log-prob;
    2. of the ``2 * num_beams`` best candidates, those ending in EOS *and ranked among the best
       ``num_beams``* become finished hypotheses (scored as above); at the last step
       (``max_new_tokens`` reached) the best ``num_beams`` candidates all finish;
    3. the best ``num_beams`` candidates that did not end become the running beams, and the KV
       cache is reordered to follow them.

    Stopping rule: this mirrors transformers' ``generate(num_beams=..., do_sample=False,
    early_stopping=True, length_penalty=...)`` -- a prompt is done as soon as it has
    ``num_beams`` finished hypotheses (even though a running beam might still have reached a
    better score later), and the search ends when every prompt is done or after
    ``max_new_tokens`` steps. The returned best sequence is the one ``generate`` returns, padded
    after its EOS with ``pad_token_id`` (default: the EOS id) up to the longest in the batch.

    Args:
        model: a causal LM returning ``.logits`` and ``.past_key_values``.
        input_ids: prompts of shape ``(batch, prompt_length)``.
        num_beams: beams per prompt, ``>= 1`` (and ``2 * num_beams <= vocab``).
        max_new_tokens: how many tokens to generate at most, ``>= 1``.
        length_penalty: the exponent :math:`\\alpha` of the length normalisation.
        eos_token_id: the end-of-sequence id, or ``None`` (then every hypothesis runs to the budget).
        pad_token_id: written after a finished hypothesis's EOS (default ``eos_token_id``).
        num_return_sequences: how many of the best finished hypotheses to return per prompt
            (``<= num_beams``), best first.

    Returns:
        LongTensor ``(batch * num_return_sequences, prompt_length + generated)``.

    Taught in chapter 2, "Beam search".
    """
    _check_input_ids(input_ids)
    _check_int("num_beams", num_beams, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_return_sequences", num_return_sequences, 1)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise TypeError(f"length_penalty must be a float, got {type(length_penalty).__name__}")
    eos_token_id = _check_token_id("eos_token_id", eos_token_id)
    pad_token_id = eos_token_id if pad_token_id is None else _check_token_id("pad_token_id", pad_token_id)
    input_ids = _on_model_device(model, input_ids)
    vocab = _vocab_size(model)
    if 2 * num_beams > vocab:
        raise ValueError(f"num_beams ({num_beams}) must be at most half the vocabulary ({vocab})")

    B, P = input_ids.shape
    K = num_beams
    ids = input_ids.repeat_interleave(K, dim=0)  # (B*K, P): K copies of each prompt
    # all K beams start as the same prompt: let only beam 0 expand at the first step
    beam_logp = torch.zeros(B, K, device=ids.device)  # summed log-prob of each running beam
    beam_logp[:, 1:] = -1e9
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]  # (score, tokens)
    done = [False] * B  # early_stopping=True: a prompt is done once it has K finished hypotheses
    past = None
    for step in range(max_new_tokens):
        logits, past = _next_logits(model, ids, past)  # (B*K, V)
        V = logits.shape[-1]
        cand_logp = logits.log_softmax(dim=-1).view(B, K, V) + beam_logp[:, :, None]  # (B, K, V)
        # 1. the 2K best (beam, token) candidates per prompt: enough to keep K running beams
        top_logp, top_idx = cand_logp.view(B, K * V).topk(2 * K, dim=-1)  # (B, 2K)
        top_beam, top_token = top_idx // V, top_idx % V  # (B, 2K)
        ends = torch.ones_like(top_token, dtype=torch.bool) if step == max_new_tokens - 1 else (
            top_token == eos_token_id if eos_token_id is not None else torch.zeros_like(top_token, dtype=torch.bool)
        )  # (B, 2K): which candidates finish now (EOS, or the budget is spent)

        # 2. candidates among the best K that end become finished hypotheses
        L = step + 1  # generated length, EOS included
        for b in range(B):
            if done[b]:
                continue
            for r in range(K):  # only the best K candidates may finish
                if ends[b, r]:
                    row = b * K + top_beam[b, r]
                    tokens = torch.cat([ids[row, P:], top_token[b, r : r + 1]])
                    finished[b].append((top_logp[b, r].item() / L**length_penalty, tokens))
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]  # keep the K best
            done[b] = len(finished[b]) == K
        if all(done) or step == max_new_tokens - 1:
            break

        # 3. the best K candidates that did not end keep running
        run_logp = top_logp - 1e9 * ends.float()  # finished candidates cannot be chosen
        keep = run_logp.topk(K, dim=-1).indices  # (B, K) positions among the 2K
        beam_logp = run_logp.gather(1, keep)  # (B, K)
        src_row = (top_beam.gather(1, keep) + K * torch.arange(B, device=ids.device)[:, None]).view(-1)  # (B*K,)
        ids = torch.cat([ids[src_row], top_token.gather(1, keep).view(-1, 1)], dim=1)  # (B*K, T + 1)
        past.reorder_cache(src_row)  # each new beam continues the cache of the beam it came from

    # the best finished hypotheses, padded to a common length
    best = [tokens for b in range(B) for _, tokens in finished[b][:num_return_sequences]]
    width = max(len(t) for t in best)
    fill = pad_token_id if pad_token_id is not None else 0  # only used when an EOS ended a hypothesis
    out = torch.full((len(best), P + width), fill, dtype=torch.long, device=input_ids.device)
    out[:, :P] = input_ids.repeat_interleave(num_return_sequences, dim=0)
    for i, tokens in enumerate(best):
        out[i, P : P + len(tokens)] = tokens
    return out


# --------------------------------------------------------------------------------------------
# The truly most probable sequences, and diversity
# --------------------------------------------------------------------------------------------


def exact_top_sequences(
    next_token_probs: Callable[[tuple], Mapping],
    n: int,
    end_token,
    max_length: int = 50,
    max_expansions: int = 100_000,
) -> list[tuple[tuple, float]]:
    """The ``n`` most probable complete sequences of a distribution, found by best-first search.

    The probability of a prefix can only shrink as it grows (every factor
    :math:`P(w_{i+1} \\mid w_{1:i}) \\le 1`), so expanding the most probable open prefix first
    (uniform-cost search, Dijkstra's algorithm on :math:`-\\log P`) pops complete sequences in
    order of decreasing probability: the first ``n`` popped are exactly the ``n`` most probable.
    Greedy decoding and beam search are cheap approximations of this search.

    Args:
        next_token_probs: maps a prefix (a tuple of tokens) to ``{token: probability}`` over the
            next token (zero-probability tokens may be left out), e.g.
            ``lambda prefix: world.next_word_probs(" ".join(prefix))``.
        n: how many sequences to return, ``>= 1``.
        end_token: the token that ends a sequence (not included in the returned tuples).
        max_length: prefixes longer than this many tokens are not expanded.
        max_expansions: give up (ValueError) after expanding this many prefixes.

    Returns:
        ``[(tokens, log_probability), ...]``, most probable first; the log-probability includes
        the end event.

    Taught in chapter 2, "How far from the mode?".
    """
    if not callable(next_token_probs):
        raise TypeError("next_token_probs must be callable: prefix tuple -> {token: probability}")
    _check_int("n", n, 1)
    _check_int("max_length", max_length, 1)
    _check_int("max_expansions", max_expansions, 1)

    def expand(prefix: tuple):  # the search state of a prefix is the prefix itself
        for token, prob in next_token_probs(prefix).items():
            yield token, prob, (None if token == end_token else prefix + (token,))

    # the package's one best-first search (rl4lmt.utils), shared with TinyReviews.most_probable
    return best_first_search(expand, (), n, max_length=max_length, max_expansions=max_expansions)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: the number of different n-grams in a sample divided by the number of n-grams.

    1.0 means no n-gram repeats anywhere in the sample; a decoder that always says the same
    thing scores close to 0 (Li et al., 2016). Texts are split on whitespace.

    Taught in chapter 2, "Quality against diversity".
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a sequence of strings")
    _check_int("n", n, 1)
    ngrams = [tuple(toks[i : i + n]) for toks in (t.split() for t in texts) for i in range(len(toks) - n + 1)]
    if not ngrams:
        raise ValueError(f"texts contain no {n}-grams")
    return len(set(ngrams)) / len(ngrams)
