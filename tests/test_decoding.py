"""rl4lmt.decoding against its references: transformers' logits warpers and generate, brute force."""
import itertools
import math

import pytest
import torch
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rl4lmt import decoding

V = 30  # vocabulary of the random test model: id 0 is the EOS, V - 1 the padding


def random_model(seed: int, sharpness: float = 4.0, eos_logit: float = 0.5) -> GPT2LMHeadModel:
    """A small random GPT-2 whose outputs end (EOS, id 0) after a spread of lengths, from 1 to never.

    A random GPT-2 rarely says EOS, which would leave the EOS logic of the decoders untested: the
    EOS row of the (untied) output layer is pointed along the mean final hidden state, so the EOS
    logit sits near ``eos_logit`` while the other logits are scaled by ``sharpness``.
    """
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=V - 1, tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
        x = torch.randint(1, V, (64, 12), generator=torch.Generator().manual_seed(seed))
        h = model.transformer(x).last_hidden_state.reshape(-1, cfg.n_embd).mean(0)
        model.lm_head.weight[0] += eos_logit * h / h.dot(h)
    return model


def prompts(seed: int, batch: int = 3, length: int = 4) -> torch.Tensor:
    return torch.randint(1, V - 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def random_logits(seed: int, shape=(6, 50), ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * 2
    if ties:  # round to a coarse grid: many exactly equal logits, some at every cut-off
        z = torch.round(z * 2) / 2
    return z


# ---------------------------------------------------------------------------- logits warpers


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0, 1.7, 10.0])
def test_temperature_matches_transformers(seed, t):
    z = random_logits(seed)
    torch.testing.assert_close(decoding.temperature_scale(z, t), TemperatureLogitsWarper(t)(None, z.clone()))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 5, 17, 50, 80])
def test_top_k_matches_transformers(seed, k, ties):
    z = random_logits(seed, ties=ties)
    ours = decoding.top_k_filter(z, k)
    ref = TopKLogitsWarper(k)(None, z.clone())
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_top_p_matches_transformers(seed, p, ties):
    z = random_logits(seed, ties=ties)
    ours = decoding.top_p_filter(z, p)
    ref = TopPLogitsWarper(p)(None, z.clone())
    assert torch.equal(ours, ref)


def test_top_p_brute_force_definition():
    """Independent of transformers: the kept set is the shortest most-probable head of mass >= p."""
    for seed in range(20):
        z = random_logits(seed, shape=(1, 12))[0].double()
        probs = z.softmax(-1)
        for p in [0.3, 0.6, 0.8, 0.95]:
            order = torch.argsort(probs, descending=True)
            need = int(torch.searchsorted(probs[order].cumsum(0), torch.tensor(p, dtype=torch.float64))) + 1
            expected = set(order[:need].tolist())
            kept = set(torch.nonzero(decoding.top_p_filter(z, p) > float("-inf")).flatten().tolist())
            assert kept == expected, (seed, p)


def test_filters_keep_at_least_one_and_work_on_any_batch_shape():
    z = random_logits(0, shape=(2, 3, 40))
    assert (decoding.top_p_filter(z, 1e-9) > float("-inf")).sum(-1).eq(1).all()
    assert (decoding.top_k_filter(z, 1) > float("-inf")).sum(-1).eq(1).all()
    assert decoding.top_k_filter(z, 3).shape == z.shape
    # a 1-D row behaves as a batch of one
    torch.testing.assert_close(decoding.top_p_filter(z[0, 0], 0.7), decoding.top_p_filter(z[:1, :1], 0.7)[0, 0])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda z: decoding.temperature_scale(z, 0.0), "t"),
        (lambda z: decoding.temperature_scale(z, -1.0), "t"),
        (lambda z: decoding.top_k_filter(z, 0), "k"),
        (lambda z: decoding.top_k_filter(z, -3), "k"),
        (lambda z: decoding.top_p_filter(z, 0.0), "p"),
        (lambda z: decoding.top_p_filter(z, 1.5), "p"),
        (lambda z: decoding.top_p_filter(z, -0.1), "p"),
        (lambda z: decoding.top_p_filter(z[:, :0], 0.5), "logits"),
    ],
)
def test_filters_reject_bad_values(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(torch.randn(2, 5))


def test_filters_reject_bad_types():
    with pytest.raises(TypeError, match="logits"):
        decoding.top_k_filter(torch.arange(5), 2)
    with pytest.raises(TypeError, match=r"\bk\b"):
        decoding.top_k_filter(torch.randn(5), 2.5)


# ---------------------------------------------------------------------------- decoders vs generate


def generate(model, x, **kw):
    return model.generate(x, attention_mask=torch.ones_like(x), pad_token_id=V - 1, **kw)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eos", [0, None])
def test_greedy_matches_generate(seed, eos):
    model, x = random_model(seed), prompts(seed)
    if eos is None:
        model.generation_config.eos_token_id = None  # otherwise generate falls back to the config's EOS
    ref = generate(model, x, do_sample=False, max_new_tokens=12, eos_token_id=eos)
    ours = decoding.greedy(model, x, 12, eos_token_id=eos, pad_token_id=V - 1)
    assert torch.equal(ours, ref)


def test_greedy_stops_early_and_pads_after_eos():
    for seed in range(20):
        model, x = random_model(seed), prompts(seed, batch=5)
        out = decoding.greedy(model, x, 15, eos_token_id=0, pad_token_id=V - 1)
        gen = out[:, x.shape[1]:]
        for row in gen.tolist():
            if 0 in row:  # everything after the first EOS is padding
                assert all(t == V - 1 for t in row[row.index(0) + 1:])
        if out.shape[1] < x.shape[1] + 15:
            assert (gen == 0).any(1).all()  # stopped early only because every row ended


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.7, None, None), (1.3, 5, None), (0.8, None, 0.8), (0.6, 10, 0.9)]
)
def test_sample_matches_generate_with_the_same_seed(seed, temperature, top_k, top_p):
    model, x = random_model(seed, sharpness=2.0), prompts(seed, batch=4)
    torch.manual_seed(100 + seed)
    ref = generate(
        model, x, do_sample=True, max_new_tokens=10, eos_token_id=0,
        temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0,
    )
    torch.manual_seed(100 + seed)
    ours = decoding.sample(model, x, 10, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_token_id=0, pad_token_id=V - 1)
    assert torch.equal(ours, ref)


def test_sample_generator_is_reproducible_and_follows_the_distribution():
    model = random_model(0, sharpness=1.0)
    x = torch.zeros(4000, 1, dtype=torch.long)
    a = decoding.sample(model, x, 1, generator=torch.Generator().manual_seed(1))
    b = decoding.sample(model, x, 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # the empirical first-token distribution matches softmax(logits / t) restricted to the top 5,
    # built here without the package: the five largest logits, renormalised (chi-square test)
    with torch.no_grad():
        logits = model(x[:1]).logits[0, -1].double()
    top = torch.topk(logits, 5).indices
    probs = torch.zeros(V, dtype=torch.float64)
    probs[top] = torch.softmax(logits[top] / 0.5, -1)
    draws = decoding.sample(model, x, 1, temperature=0.5, top_k=5, generator=torch.Generator().manual_seed(2))[:, 1]
    counts = torch.bincount(draws, minlength=V).double()
    assert counts[probs == 0].sum() == 0
    assert stats.chisquare(counts[top].numpy(), (probs[top] * len(draws)).numpy()).pvalue > 1e-3
    # and the test can tell: temperature 1 instead of 0.5 is rejected
    wrong = torch.softmax(logits[top], -1)
    assert stats.chisquare(counts[top].numpy(), (wrong * len(draws)).numpy()).pvalue < 1e-6


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_beams", [1, 2, 4])
def test_beam_search_matches_generate(seed, num_beams):
    model, x = random_model(seed), prompts(seed)
    for length_penalty in (1.0, 0.0, 2.0, -0.5):
        ref = generate(
            model, x, num_beams=num_beams, do_sample=False, early_stopping=True,
            length_penalty=length_penalty, max_new_tokens=8, eos_token_id=0,
        )
        ours = decoding.beam_search(model, x, num_beams, 8, length_penalty=length_penalty,
                                    eos_token_id=0, pad_token_id=V - 1)
        assert torch.equal(ours, ref), f"length_penalty={length_penalty}"


@pytest.mark.parametrize("seed", range(3))
def test_beam_search_returns_generates_top_hypotheses(seed):
    model, x = random_model(seed), prompts(seed, batch=2)
    ref = generate(model, x, num_beams=4, num_return_sequences=3, do_sample=False, early_stopping=True,
                   max_new_tokens=8, eos_token_id=0)
    ours = decoding.beam_search(model, x, 4, 8, eos_token_id=0, pad_token_id=V - 1, num_return_sequences=3)
    assert torch.equal(ours, ref)


def test_beam_search_test_model_really_finishes_hypotheses():
    """Guard for the test above: the random models do produce EOS inside beams, at several lengths."""
    lengths = []
    for seed in range(6):
        out = decoding.beam_search(random_model(seed), prompts(seed), 2, 8, eos_token_id=0, pad_token_id=V - 1)
        lengths += [row.index(0) + 1 if 0 in row else None for row in out[:, 4:].tolist()]
    assert None in lengths, "some hypotheses should run to the budget"
    assert len(set(lengths) - {None}) >= 3, "hypotheses should end at several lengths"


def test_beam_search_with_one_beam_is_greedy():
    """Independent of generate: a single beam that may only finish at its best candidate is greedy decoding."""
    for seed in range(6):
        model, x = random_model(seed), prompts(seed)
        for lp in (1.0, 0.0):
            ours = decoding.beam_search(model, x, 1, 10, length_penalty=lp, eos_token_id=0, pad_token_id=V - 1)
            assert torch.equal(ours, decoding.greedy(model, x, 10, eos_token_id=0, pad_token_id=V - 1))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=20), "num_beams"),
        (dict(num_return_sequences=3), "num_return_sequences"),
        (dict(eos_token_id=-1), "eos_token_id"),
    ],
)
def test_beam_search_rejects_bad_input(kwargs, name):
    model, x = random_model(0), prompts(0)
    args = dict(num_beams=2, max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=name):
        decoding.beam_search(model, x, **args)


def test_decoders_reject_bad_prompts_and_settings():
    model = random_model(0)
    with pytest.raises(ValueError, match="input_ids"):
        decoding.greedy(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="input_ids"):
        decoding.greedy(model, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.sample(model, prompts(0), 0)
    for kwargs, name in [(dict(temperature=0.0), r"\bt\b"), (dict(top_k=0), r"\bk\b"), (dict(top_p=1.2), r"\bp\b")]:
        with pytest.raises(ValueError, match=name):
            decoding.sample(model, prompts(0), 2, **kwargs)


# ---------------------------------------------------------------------------- mode search, diversity


def test_exact_top_sequences_matches_enumeration():
    """A tiny Markov chain: enumerate every sequence up to the length limit and sort by probability."""
    table = {"a": {"a": 0.5, "b": 0.2, "$": 0.3}, "b": {"a": 0.1, "b": 0.3, "$": 0.6}, None: {"a": 0.6, "b": 0.4}}

    def probs(prefix):
        return table[prefix[-1] if prefix else None]

    every = []
    for length in range(1, 9):
        for seq in itertools.product("ab", repeat=length):
            lp = sum(math.log(probs(seq[:i])[seq[i]]) for i in range(length)) + math.log(probs(seq)["$"])
            every.append((seq, lp))
    every.sort(key=lambda s: -s[1])
    found = decoding.exact_top_sequences(probs, 6, "$", max_length=8)
    assert [s for s, _ in found] == [s for s, _ in every[:6]]
    assert [lp for _, lp in found] == pytest.approx([lp for _, lp in every[:6]])


def test_distinct_n():
    assert decoding.distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert decoding.distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert decoding.distinct_n(["x y"] * 10, 2) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"\bn\b"):
        decoding.distinct_n(["a b"], 0)


# ---------------------------------------------------------------------------- locally typical sampling


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mass", [1e-6, 0.1, 0.2, 0.5, 0.9, 0.95, 0.999])
def test_typical_matches_transformers(seed, mass, ties):
    from transformers.generation.logits_process import TypicalLogitsWarper

    z = random_logits(seed, ties=ties)
    z_before = z.clone()
    ours = decoding.typical_filter(z, mass)
    assert torch.equal(ours, TypicalLogitsWarper(mass)(None, z.clone()))
    assert torch.equal(z, z_before)  # the input is left alone


def test_typical_brute_force_definition_and_edges():
    """Independent of transformers: the shortest head by |surprisal - entropy| with mass >= `mass`."""
    for seed in range(20):
        z = random_logits(seed, shape=(1, 12))[0].double()
        logp = z.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum()
        order = sorted(range(12), key=lambda w: abs(-logp[w].item() - entropy.item()))
        for mass in [0.2, 0.5, 0.8, 0.95]:
            head, total = [], 0.0
            for w in order:
                head.append(w)
                total += logp[w].exp().item()
                if total >= mass:
                    break
            kept = set(torch.nonzero(decoding.typical_filter(z, mass) > float("-inf")).flatten().tolist())
            assert kept == set(head), (seed, mass)
    # the most probable token is dropped when it is far less surprising than typical
    z = torch.tensor([[5.0] + [0.0] * 200])  # P(top) ~ 0.42, entropy ~ 3.7 nats, top surprisal ~ 0.9
    assert decoding.typical_filter(z, 0.5)[0, 0] == float("-inf")
    assert torch.equal(decoding.typical_filter(z, 1.0), z)  # mass 1 keeps everything
    assert (decoding.typical_filter(random_logits(1, shape=(2, 3, 40)), 1e-9) > float("-inf")).sum(-1).eq(1).all()
    with pytest.raises(ValueError, match=r"\bmass\b"):
        decoding.typical_filter(z, 0.0)
    with pytest.raises(TypeError, match=r"\bmass\b"):
        decoding.typical_filter(z, "0.5")


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("temperature, top_k, typical_p", [(1.0, None, 0.5), (0.8, 10, 0.9)])
def test_sample_with_typical_p_matches_generate(seed, temperature, top_k, typical_p):
    model, x = random_model(seed), prompts(seed)
    torch.manual_seed(seed)
    ref = generate(model, x, do_sample=True, max_new_tokens=10, temperature=temperature, top_k=top_k or 0,
                   top_p=1.0, typical_p=typical_p, eos_token_id=0)
    torch.manual_seed(seed)
    ours = decoding.sample(model, x, 10, temperature=temperature, top_k=top_k, typical_p=typical_p,
                           eos_token_id=0, pad_token_id=V - 1)
    assert torch.equal(ours, ref)
    with pytest.raises(ValueError, match=r"\bmass\b"):
        decoding.sample(model, x, 2, typical_p=1.5)
