"""Helpers that assignment test cells import (visible and hidden tests), so each cell stays self-contained.

A test cell may not read anything from another cell except the student's functions (the master
checker enforces it); what several cells need comes from here, imported by the cell itself:

- :func:`kept`: which tokens a filter kept;
- :func:`random_lm`: a small random GPT-2 whose generations end after many different lengths;
- :func:`assert_greedy_matches` and :func:`assert_beam_matches`: "the same output as ``generate``",
  except where the two differ only at a numerical near-tie (two next tokens whose logits agree to
  float precision, or two hypotheses with the same score). A correct solution that computes in
  another order, in another precision or on a GPU may break such a tie the other way: it must
  not lose its points.
"""
from __future__ import annotations

__all__ = ["kept", "random_lm", "assert_greedy_matches", "assert_beam_matches"]


def kept(logits):
    """Which tokens a filter kept (a bool tensor: the logit is not ``-inf``)."""
    return logits > float("-inf")


def random_lm(seed: int, vocab: int = 30, eos_logit: float = 0.5):
    """A small random GPT-2 (EOS = BOS = 0, pad = vocab - 1) whose outputs end after many different lengths."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays untouched
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                         eos_token_id=0, pad_token_id=vocab - 1, tie_word_embeddings=False)
        lm = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(4.0)  # peakier than a random init
        x = torch.randint(1, vocab, (64, 12), generator=gen)
        h = lm.transformer(x).last_hidden_state.reshape(-1, cfg.n_embd).mean(0)
        lm.lm_head.weight[0] += eos_logit * h / h.dot(h)  # EOS logit near eos_logit: EOS is common
    return lm


def _check_tensor(got, want, what: str):
    import torch

    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a LongTensor like generate's, got {type(got).__name__}")
    if got.dtype != torch.long or got.dim() != 2 or got.shape[0] != want.shape[0]:
        raise AssertionError(f"{what}: expected a LongTensor of shape {tuple(want.shape)}, "
                             f"got {got.dtype} {tuple(got.shape)}")


def assert_greedy_matches(model, got, want, prompt_length: int, what: str, eos_token_id=None, atol: float = 1e-3):
    """``got`` equals generate's greedy ``want``, or differs only where two tokens' logits tie within ``atol``.

    Row by row, at the first position where the two disagree, the model's logits for generate's
    token and for the solution's token (after the common prefix) must agree within ``atol``
    (a near-tie; ``1e-3`` covers a GPU's TF32 arithmetic). After a near-tie the two continue from
    different prefixes, so the rest of the row (and the padded length) is not compared.
    """
    import torch

    _check_tensor(got, want, what)
    got, want = got.cpu(), want.cpu()
    if got.shape == want.shape and torch.equal(got, want):
        return
    device = next(model.parameters()).device
    tied = False
    for i in range(want.shape[0]):
        g, w = got[i].tolist(), want[i].tolist()
        if g[:prompt_length] != w[:prompt_length]:
            raise AssertionError(f"{what}: row {i} does not start with its prompt")
        n = min(len(g), len(w))
        j = next((j for j in range(prompt_length, n) if g[j] != w[j]), None)
        if j is None:
            continue
        if eos_token_id is not None and eos_token_id in w[prompt_length:j]:
            raise AssertionError(f"{what}: row {i} differs after its EOS at position {j} (padding): "
                                 f"expected {w[j]}, got {g[j]}\nexpected {w}\ngot      {g}")
        with torch.no_grad():
            logits = model(torch.tensor([w[:j]], device=device)).logits[0, -1].float().cpu()
        gap = float(logits[w[j]] - logits[g[j]]) if 0 <= g[j] < logits.shape[0] else float("inf")
        if abs(gap) > atol:
            raise AssertionError(f"{what}: row {i} differs from generate at position {j}: generate chose token {w[j]} "
                                 f"(logit {float(logits[w[j]]):.4f}), you chose {g[j]} (logit gap {gap:.4g}, not a tie)"
                                 f"\nexpected {w}\ngot      {g}")
        tied = True
    if not tied:  # no row diverged at a tie, yet the tensors differ: length or padding
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)} "
                             f"(rows agree where both have tokens: check when you stop and how you pad)")


def _hypothesis(row: list[int], prompt_length: int, eos_token_id: int) -> list[int]:
    gen = row[prompt_length:]
    return gen[: gen.index(eos_token_id) + 1] if eos_token_id in gen else gen


def assert_beam_matches(model, got, want, prompt_length: int, what: str, length_penalty: float = 1.0,
                        eos_token_id: int = 0, rtol: float = 1e-4):
    """``got`` equals generate's beam search ``want``, or returns, per row, a hypothesis of the same score.

    The score is generate's: the summed log-probability of the generated tokens (EOS included)
    divided by their number to the power ``length_penalty``. Where two hypotheses tie within
    ``rtol`` (relative), either one is right. A row is compared up to its EOS (padding after it
    and the padded length follow from the other rows).
    """
    import torch

    _check_tensor(got, want, what)
    got, want = got.cpu(), want.cpu()
    if got.shape == want.shape and torch.equal(got, want):
        return
    device = next(model.parameters()).device

    def score(prompt, hyp):
        ids = torch.tensor([prompt + hyp], device=device)
        with torch.no_grad():
            logp = model(ids).logits[0, len(prompt) - 1:-1].double().log_softmax(-1).cpu()
        total = float(logp[torch.arange(len(hyp)), torch.tensor(hyp)].sum())
        return total / len(hyp) ** length_penalty

    for i in range(want.shape[0]):
        g, w = got[i].tolist(), want[i].tolist()
        prompt = w[:prompt_length]
        if g[:prompt_length] != prompt:
            raise AssertionError(f"{what}: row {i} does not start with its prompt")
        hg, hw = _hypothesis(g, prompt_length, eos_token_id), _hypothesis(w, prompt_length, eos_token_id)
        pad_g, pad_w = g[prompt_length + len(hg):], w[prompt_length + len(hw):]
        if any(t != eos_token_id for t in pad_g) and eos_token_id in hg:
            raise AssertionError(f"{what}: row {i}: after the EOS only padding, got {g}")
        if hg == hw:
            continue
        if not hg or any(not 0 <= t < model.config.vocab_size for t in hg):
            raise AssertionError(f"{what}: row {i}: expected hypothesis {hw}, got {hg}")
        s_g, s_w = score(prompt, hg), score(prompt, hw)
        if abs(s_g - s_w) > rtol * max(1.0, abs(s_w)):
            raise AssertionError(f"{what}: row {i}: generate returns {hw} (score {s_w:.5f}), you returned {hg} "
                                 f"(score {s_g:.5f}); not a tie")
        del pad_w
    if got.shape != want.shape and all(_hypothesis(got[i].tolist(), prompt_length, eos_token_id)
                                       == _hypothesis(want[i].tolist(), prompt_length, eos_token_id)
                                       for i in range(want.shape[0])):
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)} "
                             "(pad every row to the longest)")
