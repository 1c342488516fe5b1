"""The package's conventions, checked across modules (DESIGN.md, "Conventions").

- Randomness: library code draws from the seed or generator it is given and leaves Python's,
  NumPy's and torch's global generators alone (only a ``seed=`` of a training recipe reseeds them,
  by its documentation).
- Devices: a generator that cannot draw where the model computes is a clear ValueError naming the
  argument (not torch's error from deep inside a loop); inputs move to the model's device.
- Units: log-probabilities are natural logs everywhere (nats); bits only where asked (``base=2``,
  or surprisal's default, the lecture's); the world, the LM helpers and the KL helpers agree.
- One way to do each thing: one best-first search, one device helper, one sampler.
"""
from __future__ import annotations

import inspect
import itertools
import math
import random

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import rl4lmt.envs  # noqa: F401  (registers the environments)
from rl4lmt import decoding, lm, mdp, pg, utils, world, zoo
from rl4lmt.world import EOS, TinyReviews

W = TinyReviews(seed=0)


def _global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


def _same(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(W.vocab) + 2, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                       bos_token_id=0, eos_token_id=0)).eval()
    return model, zoo.build_tokenizer(W)


def test_seeded_library_calls_leave_the_global_generators_alone(tiny):
    model, tok = tiny
    before = _global_states()
    W.sample(5, seed=1)
    W.complete("the plot", 3, seed=2)
    W.instructions(3, seed=0)
    W.preferences(2, seed=0)
    TinyReviews(seed=4).sample(3)  # no seed: the instance's own generator
    env = gym.make("rl4lmt/GridWorld-v0", slip=0.2)
    env.reset(seed=0)
    for _ in range(5):
        env.step(0)
    bandit = gym.make("rl4lmt/Bandit-v0")
    bandit.reset(seed=0)
    bandit.step(1)
    P, R = env.unwrapped.transition_model()
    mdp.mc_prediction(P, R, np.full(R.shape, 0.25), 0.9, 5, seed=0)
    mdp.td_control(P, R, 0.9, 5, seed=0)
    mdp.run_bandit(mdp.BanditAgent(5, 3, epsilon=0.1), steps=5, seed=0)
    mdp.epsilon_greedy(np.zeros((3, 4)), 0.5, np.random.default_rng(0))
    x = torch.zeros(4, 1, dtype=torch.long)
    decoding.sample(model, x, 3, generator=torch.Generator().manual_seed(0), eos_token_id=0)
    pg.sample_rollouts(model, tok, 4, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    assert _same(before, _global_states()), "a seeded library call drew from (or reseeded) a global generator"


def test_a_generator_on_the_wrong_device_is_a_clear_error(tiny):
    model, tok = tiny
    x = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(TypeError, match="generator"):
        decoding.sample(model, x, 2, generator=np.random.default_rng(0))
    if torch.cuda.is_available():  # on a GPU machine: a CPU generator for a CUDA model
        gpu = model.to("cuda")
        try:
            with pytest.raises(ValueError, match="generator is on cpu"):
                decoding.sample(gpu, x, 2, generator=torch.Generator().manual_seed(0))
            # inputs on the CPU move to the model's device; a generator there works
            out = pg.sample_rollouts(gpu, tok, 2, max_new_tokens=2,
                                     generator=torch.Generator(device="cuda").manual_seed(0))
            assert out.input_ids.device.type == "cuda"
            assert decoding.greedy(gpu, x, 2).device.type == "cuda"
        finally:
            model.to("cpu")
    else:  # the same check, without a GPU: the device types are compared
        with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda"):
            utils.check_generator(torch.Generator(), torch.device("cuda"))


def test_units_are_nats_across_world_lm_and_kl():
    """The world's log-probs and lm's helpers are natural logs: per-event log-probs of world
    samples give lm.cross_entropy == world.cross_entropy, and bits are the same number / ln 2."""
    texts = W.sample(40, seed=5)
    rows = []
    for t in texts:
        words = t.split() + [EOS]
        rows.append([math.log(W.next_word_probs(" ".join(words[:i]))[w]) for i, w in enumerate(words)])
    width = max(map(len, rows))
    logp = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    nats = W.cross_entropy(texts)
    assert lm.cross_entropy(logp, mask) == pytest.approx(nats, rel=1e-9)
    assert lm.cross_entropy(logp, mask, base=2) == pytest.approx(nats / math.log(2), rel=1e-9)
    # surprisal: bits by default (the lecture's), of the same events
    bits = sum(float(lm.surprisal(min(1.0, math.exp(v)))) for r in rows for v in r) / int(mask.sum())
    assert bits == pytest.approx(nats / math.log(2), rel=1e-9)
    # a KL of natural-log probabilities is in nats: KL(Bernoulli(.5) || Bernoulli(.25)) by hand
    p, q = torch.log(torch.tensor([[[0.5, 0.5]]])), torch.log(torch.tensor([[[0.25, 0.75]]]))
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(pg.exact_token_kl(p, q, torch.ones(1, 1))) == pytest.approx(by_hand, rel=1e-6)


def test_one_best_first_search():
    """world.most_probable and decoding.exact_top_sequences are the one search of rl4lmt.utils: on the
    world's own next-word distribution they return the same reviews with the same log-probs."""
    via_decoding = decoding.exact_top_sequences(lambda prefix: W.next_word_probs(" ".join(prefix)), 5, EOS)
    via_world = W.most_probable(5)
    # the same log-probs in the same order (the top reviews tie: which of the tied comes first
    # depends on the order each expands a distribution in), each the exact log-prob of its review
    assert [lp for _, lp in via_decoding] == pytest.approx([lp for _, lp in via_world], abs=1e-12)
    for text, lp in [(" ".join(s), lp) for s, lp in via_decoding] + via_world:
        assert W.logprob(text) == pytest.approx(lp, abs=1e-9), text
    for module in (world, decoding):
        assert "heapq" not in inspect.getsource(module), f"{module.__name__} has a search of its own"
    assert "best_first_search" in inspect.getsource(W.most_probable)
    assert "best_first_search" in inspect.getsource(decoding.exact_top_sequences)


def test_best_first_search_against_enumeration():
    """A 3-token Markov chain: every sequence up to length 7 enumerated; ties broken by push order."""
    table = {None: {"a": 0.5, "b": 0.5}, "a": {"a": 0.3, "b": 0.3, "$": 0.4}, "b": {"a": 0.6, "$": 0.4}}

    def expand(prefix):
        for token, p in table[prefix[-1] if prefix else None].items():
            yield token, p, (None if token == "$" else prefix + (token,))

    found = utils.best_first_search(expand, (), 10, max_length=7)
    every = {}
    for length in range(1, 8):
        for seq in itertools.product("ab", repeat=length):
            prob, prev = 1.0, None
            for tok in seq:
                prob *= table[prev].get(tok, 0.0)
                prev = tok
            prob *= table[prev]["$"]
            if prob > 0:
                every[seq] = math.log(prob)
    best = sorted(every.values(), reverse=True)[:10]
    assert [lp for _, lp in found] == pytest.approx(best)
    assert all(every[s] == pytest.approx(lp) for s, lp in found)
    with pytest.raises(ValueError, match="max_expansions"):
        utils.best_first_search(expand, (), 10, max_expansions=3)


def test_one_teacher_forcing_loop():
    """The shipped model's recipe runs lm.train_teacher_forcing; no second loop in the package."""
    source = inspect.getsource(zoo.train)
    assert "train_teacher_forcing(" in source and ".backward()" not in source
    assert ".backward()" in inspect.getsource(lm.train_teacher_forcing)


def test_one_sampler_no_generate_in_the_package():
    """Every rollout samples through rl4lmt.decoding: no package module calls ``.generate(...)``,
    whose logits processors follow a checkpoint's generation_config."""
    import ast
    import pathlib

    calls = []
    for path in sorted(pathlib.Path(utils.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "generate":
                calls.append(f"{path.name}:{node.lineno}")
    assert not calls, f"model.generate called in the package (sample with rl4lmt.decoding instead): {calls}"


def test_seed_and_generator_arguments_are_keywords_at_the_end():
    """``seed=``/``generator=``: the last parameter, or keyword-only, in world, decoding, envs, mdp, pg.

    Known, documented exceptions: decoding.sample's ``generator`` (generate's order, which the
    chapter 2 exercise mirrors), mdp's building blocks that take a NumPy ``rng`` as data
    (epsilon_greedy, BanditAgent.act, sample_episode, the bandit testbed helpers), and
    gymnasium's ``reset(*, seed, options)``.
    """
    import rl4lmt.envs.bandit
    import rl4lmt.envs.gridworld
    import rl4lmt.envs.textgen

    allowed = {"rl4lmt.decoding.sample", "rl4lmt.mdp.epsilon_greedy", "rl4lmt.mdp.BanditAgent.act",
               "rl4lmt.mdp.sample_episode", "rl4lmt.envs.bandit.sample_arm_values", "rl4lmt.envs.bandit.pull_arms"}
    problems = []
    for module in (world, decoding, mdp, pg, rl4lmt.envs.gridworld, rl4lmt.envs.bandit, rl4lmt.envs.textgen):
        functions = []
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                functions.append((name, obj))
            elif inspect.isclass(obj):
                functions += [(f"{name}.{n}", f) for n, f in vars(obj).items()
                              if inspect.isfunction(f) and (n == "__init__" or not n.startswith("_"))]
        for name, function in functions:
            params = list(inspect.signature(function).parameters.values())
            for i, p in enumerate(params):
                if p.name not in ("seed", "generator", "rng") or f"{module.__name__}.{name}" in allowed:
                    continue
                if name.endswith(".reset"):
                    continue  # gymnasium's API
                if not (p.kind == p.KEYWORD_ONLY or i == len(params) - 1):
                    problems.append(f"{module.__name__}.{name}: {p.name} is positional and not last")
    assert not problems, "\n".join(problems)
    with pytest.raises(TypeError):
        mdp.run_bandit(mdp.BanditAgent(3, 2), 10, 7)  # a positional seed is refused, not misread
