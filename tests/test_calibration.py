"""rl4lmt.calibration and rl4lmt.probing against independent references.

- ECE and reliability diagrams against torchmetrics' Binary/MulticlassCalibrationError (norm='l1'),
  scikit-learn's calibration_curve (uniform and quantile bins) and a loop written from the definition;
- Brier score and NLL against scikit-learn's brier_score_loss and log_loss;
- exact calibration against the world's exact next-word probabilities and a Monte-Carlo estimate;
- temperature scaling against a grid search and against logits whose true temperature is known;
- the world's P(positive | prefix) against sampled completions;
- IQM, stratified bootstrap intervals and performance profiles against rliable and scipy;
- probes against scikit-learn's LogisticRegression; the logit lens against forward hooks and the
  model's own output; INLP's projection against its defining properties.
"""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from rl4lmt import calibration as cal
from rl4lmt import probing
from rl4lmt.world import TinyReviews


def binary_data(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    p = rng.random(n) * 0.999  # no confidence of exactly 1.0 (see test_edge_value_one)
    y = (rng.random(n) < p**1.7).astype(np.int64)  # over-confident: truth below the prediction
    return p, y


def ece_by_definition(conf, acc, n_bins):
    """A loop over bins [b/M, (b+1)/M), the last one closed at 1.0."""
    total, n = 0.0, len(conf)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i in range(n) if lo <= conf[i] < hi or (b == n_bins - 1 and conf[i] == 1.0)]
        if inside:
            gap = abs(sum(acc[i] for i in inside) / len(inside) - sum(conf[i] for i in inside) / len(inside))
            total += len(inside) / n * gap
    return total


# ---------------------------------------------------------------------------- ECE and reliability


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 40])
def test_binary_ece_matches_torchmetrics(seed, n_bins):
    from torchmetrics.classification import BinaryCalibrationError

    p, y = binary_data(seed)
    ref = BinaryCalibrationError(n_bins=n_bins, norm="l1")(torch.tensor(p), torch.tensor(y))
    assert cal.expected_calibration_error(p, y, n_bins) == pytest.approx(float(ref), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_bins", [5, 15])
def test_multiclass_ece_matches_torchmetrics(seed, n_bins):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(800, 7, generator=g, dtype=torch.float64) * 2).softmax(-1)
    labels = torch.randint(0, 7, (800,), generator=g)
    conf, correct = cal.top_label(probs, labels)
    ref = MulticlassCalibrationError(num_classes=7, n_bins=n_bins, norm="l1")(probs, labels)
    assert cal.expected_calibration_error(conf, correct, n_bins) == pytest.approx(float(ref), abs=1e-6)


def test_top_label_takes_confidence_and_correctness_from_the_same_token():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]])
    conf, correct = cal.top_label(probs, torch.tensor([1, 2, 2]))
    assert conf.tolist() == pytest.approx([0.7, 0.5, 0.6])
    assert correct.tolist() == [1.0, 0.0, 1.0]


def test_edge_value_one_joins_the_last_bin():
    # sure and wrong: ECE 1, whatever the binning -- a binning that drops 1.0 would say 0
    assert cal.expected_calibration_error([1.0, 1.0], [0, 0], 10) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.random(300), np.ones(50), 0.9 + 0.1 * rng.random(30)])
    acc = (rng.random(conf.size) < 0.8).astype(float)
    for n_bins in (3, 10):
        assert cal.expected_calibration_error(conf, acc, n_bins) == pytest.approx(ece_by_definition(conf, acc, n_bins))
    d = cal.reliability_diagram(conf, acc, 10)
    assert d.counts[-1] == np.sum(conf >= 0.9) and d.counts.sum() == conf.size


def test_unweighted_mean_over_bins_is_not_ece():
    conf = np.array([0.95] * 9 + [0.15])
    acc = np.array([1.0] * 9 + [1.0])
    # bins 0.9-1.0 (9 predictions, gap 0.05) and 0.1-0.2 (1 prediction, gap 0.85)
    assert cal.expected_calibration_error(conf, acc, 10) == pytest.approx(0.9 * 0.05 + 0.1 * 0.85)


@pytest.mark.parametrize("strategy, sk", [("width", "uniform"), ("mass", "quantile")])
def test_reliability_diagram_matches_sklearn_calibration_curve(strategy, sk):
    p, y = binary_data(4, n=1000)  # distinct confidences, 1000 divisible by 10: equal-mass = quantile bins
    d = cal.reliability_diagram(p, y, 10, strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=sk)
    full = d.counts > 0
    np.testing.assert_allclose(d.accuracy[full], prob_true)
    np.testing.assert_allclose(d.confidence[full], prob_pred)
    if strategy == "mass":
        assert np.all(d.counts == 100)


def test_weights_act_as_repetitions():
    p, y = binary_data(5, n=300)
    reps = np.random.default_rng(1).integers(1, 4, size=300)
    for strategy in ("width", "mass"):
        weighted = cal.expected_calibration_error(p, y, 8, strategy, weights=reps)
        repeated = cal.expected_calibration_error(np.repeat(p, reps), np.repeat(y, reps), 8, strategy)
        if strategy == "width":
            assert weighted == pytest.approx(repeated)
        else:  # repeated copies may straddle a bin edge; the cut points move by at most one copy
            assert weighted == pytest.approx(repeated, abs=0.02)


def test_brier_and_nll_match_sklearn():
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(400, 5, generator=g, dtype=torch.float64)).softmax(-1)
    labels = torch.randint(0, 5, (400,), generator=g)
    ref = brier_score_loss(labels.numpy(), probs.numpy(), labels=range(5))
    assert cal.brier_score(probs, labels) == pytest.approx(ref)
    assert cal.nll(probs, labels) == pytest.approx(log_loss(labels.numpy(), probs.numpy(), labels=range(5)))
    p, y = binary_data(0, n=200)
    two = torch.tensor(np.stack([1 - p, p], 1))
    assert cal.brier_score(two, torch.tensor(y)) == pytest.approx(2 * brier_score_loss(y, p))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: cal.expected_calibration_error([0.5, 1.5], [1, 0]), "confidences"),
        (lambda: cal.expected_calibration_error([0.5, 0.5], [1, 2]), "correct"),
        (lambda: cal.expected_calibration_error([0.5, 0.5], [1]), "correct"),
        (lambda: cal.expected_calibration_error([0.5], [1], n_bins=0), "n_bins"),
        (lambda: cal.expected_calibration_error([0.5], [1], strategy="quantile"), "strategy"),
        (lambda: cal.expected_calibration_error([], []), "confidences"),
        (lambda: cal.top_label(torch.ones(3, 2) / 2, torch.tensor([0, 1, 2])), "labels"),
        (lambda: cal.stratified_bootstrap_ci(np.ones((3, 2)), confidence=1.5), "confidence"),
        (lambda: cal.normalize_scores([1.0], 0.0, 0.0), "optimal_score"),
    ],
)
def test_bad_values_are_rejected(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_bad_types_are_rejected():
    with pytest.raises(TypeError, match="confidences"):
        cal.expected_calibration_error("0.5", [1])
    with pytest.raises(TypeError, match="n_bins"):
        cal.expected_calibration_error([0.5], [1], n_bins=2.5)
    with pytest.raises(TypeError, match="labels"):
        cal.top_label(torch.ones(2, 2) / 2, torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------- exact calibration


def test_exact_calibration_is_the_limit_of_sampled_ece():
    """Draw many next words from small known distributions: sampled ECE converges to the exact one."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(60, 6, generator=g, dtype=torch.float64) * 1.5).softmax(-1)  # the model
    p = (torch.randn(60, 6, generator=g, dtype=torch.float64) * 1.5 + q.log()).softmax(-1)  # the truth
    # exact accuracy of each top prediction by enumeration over the next word
    conf = [float(q[i].max()) for i in range(60)]
    acc = [sum(float(p[i, w]) for w in range(6) if w == int(q[i].argmax())) for i in range(60)]
    exact = cal.exact_calibration_error(q, p, 5)
    assert exact == pytest.approx(ece_by_definition(conf, acc, 5))
    draws = torch.multinomial(p, 4000, replacement=True, generator=g)  # (60, 4000) true next words
    labels = draws.T.reshape(-1)
    sampled = cal.expected_calibration_error(*cal.top_label(q.repeat(4000, 1), labels), 5)
    assert sampled == pytest.approx(exact, abs=0.01)  # 240k draws: binomial noise ~ 0.002


@pytest.fixture(scope="module")
def tiny():
    from rl4lmt import zoo

    torch.set_num_threads(1)
    model, tokenizer = zoo.load("tiny-reviews", device="cpu")
    return model, tokenizer, TinyReviews()


def test_next_token_distributions_are_the_worlds_and_the_models(tiny):
    model, tokenizer, world = tiny
    texts = ["the plot was good .", "sadly , i hated the plot ."]
    d = cal.next_token_distributions(model, tokenizer, world, texts)
    assert d["model_probs"].shape[0] == sum(len(t.split()) + 1 for t in texts)
    for row, prefix in [(0, ""), (3, "the plot was"), (7, "sadly"), (13, "sadly , i hated the plot .")]:
        assert d["prefixes"][row] == prefix
        truth = world.next_word_probs(prefix)
        got = {world.vocab[i]: float(v) for i, v in enumerate(d["world_probs"][row]) if v > 0}
        assert got == pytest.approx(truth)
        ids = tokenizer(prefix, return_tensors="pt")["input_ids"]  # one prefix alone: no padding
        with torch.no_grad():
            alone = model(ids).logits[0, -1].double().softmax(-1)
        torch.testing.assert_close(d["model_probs"][row], alone, atol=1e-5, rtol=1e-4)
    assert world.vocab[int(d["targets"][5])] == world.eos  # the event after "the plot was good ."
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        cal.next_token_distributions(model, tokenizer, world, ["the plot was good .", "was the"])


def test_world_positive_probability_matches_sampled_completions(tiny):
    _, _, world = tiny
    assert cal.world_positive_probability(world, "") == pytest.approx(0.5)  # the prior: 0.2 + 0.3
    for prefix in ["sadly", "the acting was not"]:
        exact = cal.world_positive_probability(world, prefix)
        texts = world.complete(prefix, 800, seed=1)
        mc = np.mean([sum(v for s, v in world.sentiment_posterior(t).items() if s > 0) for t in texts])
        assert exact == pytest.approx(mc, abs=4 * 0.5 / math.sqrt(800)), prefix  # 4 standard errors at most
    with pytest.raises(ValueError, match="prefix"):
        cal.world_positive_probability(world, "was was was")


def test_model_positive_probability_is_seeded_and_follows_the_prefix(tiny):
    model, tokenizer, world = tiny
    prefixes = ["i loved the", "i hated the"]
    a, b = (cal.model_positive_probability(model, tokenizer, world, prefixes, 16,
                                           generator=torch.Generator().manual_seed(0)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a[0] > 0.5 > a[1]


# ---------------------------------------------------------------------------- temperature scaling


def test_world_optimal_temperature_recovers_the_true_temperature():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 9, generator=g, dtype=torch.float64) * 3
    for t_true in (0.5, 1.0, 2.5):
        truth = (z / t_true).softmax(-1)
        assert cal.world_optimal_temperature(z, truth) == pytest.approx(t_true, rel=1e-4)


def test_fit_temperature_minimises_held_out_nll():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5000, 6, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial((z / 2.0).softmax(-1), 1, generator=g).squeeze(1)  # truth at T = 2
    t = cal.fit_temperature(z.float(), labels)

    def loss(t):
        return float(torch.nn.functional.cross_entropy(z / t, labels))

    grid = np.linspace(0.5, 5.0, 2000)
    best = grid[np.argmin([loss(x) for x in grid])]
    assert t == pytest.approx(best, abs=3e-3)
    assert t == pytest.approx(2.0, abs=0.15)


# ---------------------------------------------------------------------------- production variability


def test_similarities_by_hand():
    a, b = "the plot was good .", "the plot was not good ."
    assert cal.lexical_similarity(a, b) == pytest.approx(5 / 6)
    # classes DET NOUN COP ADJ PUNCT vs DET NOUN COP NEG ADJ PUNCT: bigrams 4 vs 5, 3 shared
    assert cal.syntactic_similarity(a, b) == pytest.approx(3 / 6)
    assert cal.topic_similarity(a, "i loved the music and the plot was fine .") == pytest.approx(1 / 2)
    world = TinyReviews()
    sa, sb = world.sentiment(a), world.sentiment(b)
    assert cal.sentiment_similarity(a, b, world) == pytest.approx(1 - abs(sa - sb) / 2)
    classes = cal.word_classes()
    assert classes["brilliant"] == "ADJ" and classes["acting"] == "NOUN" and classes["loved"] == "VERB"
    assert set(TinyReviews().vocab) <= set(classes)


def test_production_variability_is_the_mean_pairwise_distance():
    prods = [["a b", "a c", "b c d"], ["x", "x"]]
    got = cal.production_variability(prods, cal.lexical_similarity)
    d = [1 - 1 / 3, 1 - 1 / 4, 1 - 1 / 4]  # Jaccard of {a,b},{a,c} / {a,b},{b,c,d} / {a,c},{b,c,d}
    np.testing.assert_allclose(got, [np.mean(d), 0.0])
    with pytest.raises(ValueError, match=r"productions\[1\]"):
        cal.production_variability([["a", "b"], ["c"]], cal.lexical_similarity)


# ---------------------------------------------------------------------------- RL evaluation statistics


@pytest.mark.parametrize("shape", [(10, 3), (7, 1), (13, 5), (5,)])
def test_iqm_matches_rliable_and_scipy(shape):
    from rliable import metrics

    x = np.random.default_rng(sum(shape)).normal(size=shape)
    assert cal.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25, axis=None))
    if len(shape) == 2:
        assert cal.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
    # neither the median nor the mean
    x = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 100.0, 100.0, 100.0])
    assert cal.iqm(x) == pytest.approx(np.mean([1.0, 2.0, 3.0, 100.0]))


def test_bootstrap_interval_matches_rliable():
    from rliable import library, metrics

    x = np.random.default_rng(0).normal(size=(10, 4)) + np.arange(4)
    point, lo, hi = cal.stratified_bootstrap_ci(x, cal.iqm, reps=4000, seed=0)
    np.random.seed(0)  # rliable draws from numpy's global generator
    ref_point, ref_ci = library.get_interval_estimates({"x": x}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                                       reps=4000)
    assert point == pytest.approx(float(ref_point["x"][0]))
    assert lo == pytest.approx(float(ref_ci["x"][0, 0]), abs=0.05)  # two Monte-Carlo estimates of one interval
    assert hi == pytest.approx(float(ref_ci["x"][1, 0]), abs=0.05)
    assert lo < point < hi


def test_bootstrap_resamples_within_each_task():
    # task 0 always scores 0, task 1 always 1: every stratified resample has mean exactly 1/2
    x = np.stack([np.zeros(8), np.ones(8)], 1)
    assert cal.stratified_bootstrap_ci(x, lambda s: float(s.mean()), reps=200, seed=0) == (0.5, 0.5, 0.5)
    seen = []
    cal.stratified_bootstrap_ci(np.arange(12.0).reshape(4, 3), lambda s: seen.append(s.copy()) or 0.0, reps=50, seed=1)
    for s in seen[:-1]:  # the last call is the point estimate on the data itself
        for task in range(3):
            assert set(s[:, task]) <= set(np.arange(12.0).reshape(4, 3)[:, task])
    a = cal.stratified_bootstrap_ci(np.random.default_rng(0).random((6, 2)), reps=100, seed=3)
    assert a == cal.stratified_bootstrap_ci(np.random.default_rng(0).random((6, 2)), reps=100, seed=3)


def test_performance_profile_matches_rliable():
    from rliable import library

    x = np.random.default_rng(1).random((9, 4))
    taus = np.linspace(-0.1, 1.1, 25)
    np.testing.assert_allclose(cal.performance_profile(x, taus), library.score_distributions(x, taus))


def test_normalize_scores():
    np.testing.assert_allclose(cal.normalize_scores([[10.0, 3.0]], [0.0, 1.0], [20.0, 5.0]), [[0.5, 0.5]])


def test_available_models_lists_only_shipped_checkpoints():
    names = cal.available_models()
    assert names[0] == "tiny-reviews" and set(names) <= set(cal.PIPELINE)
    assert cal.available_models(["tiny-reviews", "no-such-model"]) == ["tiny-reviews"]


# ---------------------------------------------------------------------------- probing


@pytest.mark.parametrize("k, C", [(3, 0.5), (4, 3.0)])
def test_linear_probe_matches_sklearn(k, C):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(300, 6))
    y = (x @ rng.normal(size=(6, k)) + rng.normal(size=(300, k))).argmax(1)
    ours = probing.fit_linear_probe(x, y, C=C).predict_proba(x).numpy()
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_binary_probe_matches_sklearn_with_twice_the_C():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] - x[:, 1] + rng.normal(size=200) > 0).astype(int)
    ours = probing.fit_linear_probe(x, y, C=0.3).predict_proba(x).numpy()
    ref = LogisticRegression(C=0.6, tol=1e-10, max_iter=5000).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def random_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=40, n_embd=16, n_layer=3, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def test_logit_lens_matches_hooks_and_the_models_output():
    model = random_gpt2()
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    lens = probing.logit_lens(model, ids)
    assert lens.shape == (4, 2, 7, 40)
    with torch.no_grad():
        torch.testing.assert_close(lens[-1], model(ids).logits.log_softmax(-1))
        captured = []
        handles = [b.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
                   for b in model.transformer.h]
        model(ids)
        for h in handles:
            h.remove()
        for layer in (1, 2):  # the output of block `layer`, decoded by hand
            ref = model.lm_head(model.transformer.ln_f(captured[layer - 1])).log_softmax(-1)
            torch.testing.assert_close(lens[layer], ref)
        emb = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(7))
        torch.testing.assert_close(lens[0], model.lm_head(model.transformer.ln_f(emb)).log_softmax(-1))


def test_inlp_removes_linear_information():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 10))
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int)  # the label lives in one direction
    P, accs = probing.inlp(x, y, n_iterations=3, C=10.0)
    torch.testing.assert_close(P, P.T)
    torch.testing.assert_close(P @ P, P)
    assert accs[0] > 0.95
    xp = (torch.as_tensor(x) @ P).numpy()
    after = LogisticRegression(max_iter=2000).fit(xp[:300], y[:300]).score(xp[300:], y[300:])
    assert after < 0.65  # chance is ~0.5
    direction = np.array([1.0, 0, 0, 0.5, 0, 0, 0, 0, 0, 0])
    assert np.abs(xp @ direction).max() < 0.3 * np.abs(x @ direction).max()
    R = probing.random_projection(10, 3, seed=0)
    assert int(torch.linalg.matrix_rank(R)) == 7
    torch.testing.assert_close(R @ R, R)


def test_amnesic_projects_the_residual_stream():
    model = random_gpt2(1)
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True)
        with probing.amnesic(model, 2, torch.eye(16, dtype=torch.float64)):
            torch.testing.assert_close(model(ids).logits, plain.logits)
        P = probing.random_projection(16, 4, seed=2).float()
        with probing.amnesic(model, 2, P):
            out = model(ids)
        # by hand: project the output of block 2, then run block 3, the final norm and the unembedding
        h3 = model.transformer.h[2](plain.hidden_states[2] @ P)
        h3 = h3[0] if isinstance(h3, tuple) else h3
        torch.testing.assert_close(out.logits, model.lm_head(model.transformer.ln_f(h3)))
        assert not torch.allclose(out.logits, plain.logits)
        torch.testing.assert_close(model(ids).logits, plain.logits)  # the hook is gone
    with pytest.raises(ValueError, match="layer"):
        with probing.amnesic(model, 0, P):
            pass


def test_scalar_mix_finds_the_informative_layer():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    states = torch.randn(4, 400, 8, generator=g)
    states[2, :, 0] += 3 * (2 * y - 1)  # only layer 2 knows the label
    weights, acc = probing.fit_scalar_mix_probe(states, y, steps=300)
    assert weights.argmax() == 2 and weights[2] > 0.5
    assert acc > 0.95
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_hidden_states_of_a_batch_are_those_of_each_text_alone(tiny):
    model, tokenizer, _ = tiny
    texts = ["the plot was good .", "i hated it ."]
    hs = probing.hidden_states(model, tokenizer, texts)
    assert hs.shape == (model.config.n_layer + 1, 2, model.config.n_embd)
    for i, text in enumerate(texts):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = model(ids, output_hidden_states=True).hidden_states
        for layer in range(len(alone)):
            torch.testing.assert_close(hs[layer, i], alone[layer][0, -1].float(), atol=1e-5, rtol=1e-4)
