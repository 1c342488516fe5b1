"""The TinyReviews world must keep its claims, checked by independent means.

- the chain rule: logprob(text) == sum of log next-word probabilities (incl. the end event);
- brute force: the forward algorithm's p(text) == the sum over every latent path, enumerated;
- sampling: the machine's own random walks produce next-word frequencies that agree with
  next_word_probs (chi-square test, fixed seed);
- Monte Carlo: the average surprisal of samples agrees with the exact entropy rate;
- Bayes: posteriors average to the prior over samples (law of total expectation);
- the gold sentiment moves the right way on hand-written reviews.
"""
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from rl4lmt.world import EOS, SENTIMENTS, TinyReviews, _arcs, _start_distribution

W = TinyReviews(seed=0)


@pytest.fixture(scope="module")
def samples():
    return W.sample(3000, seed=123)


def test_vocabulary_and_lengths(samples):
    assert W.vocab[0] == EOS
    assert 150 <= len(W.vocab) <= 400, len(W.vocab)
    assert len(set(W.vocab)) == len(W.vocab)
    lengths = [len(t.split()) for t in samples]
    assert min(lengths) >= 5 and max(lengths) <= 36, (min(lengths), max(lengths))
    assert 8 <= np.mean(lengths) <= 16
    for t in samples[:200]:
        assert t == t.lower() and "  " not in t and t == t.strip()
        assert all(w in W.word_to_id for w in t.split())


def test_every_sample_is_grammatical_with_finite_logprob(samples):
    for t in samples:
        lp = W.logprob(t)
        assert math.isfinite(lp) and lp < 0, (t, lp)
        assert W.is_grammatical(t)


def test_same_seed_same_samples():
    assert TinyReviews(seed=3).sample(20) == TinyReviews(seed=3).sample(20)
    assert W.sample(20, seed=9) == W.sample(20, seed=9)
    assert W.sample(20, seed=9) != W.sample(20, seed=10)


def test_next_word_probs_sum_to_one_for_many_prefixes(samples):
    for t in samples[:150]:
        words = t.split()
        for cut in range(len(words) + 1):
            dist = W.next_word_probs(" ".join(words[:cut]))
            assert abs(sum(dist.values()) - 1.0) < 1e-9
            assert all(p > 0 for p in dist.values())
            assert words[cut] in dist if cut < len(words) else EOS in dist


def test_logprob_is_the_chain_rule_of_next_word_probs(samples):
    for t in samples[:100]:
        words = t.split()
        chain = sum(math.log(W.next_word_probs(" ".join(words[:i]))[w]) for i, w in enumerate(words))
        chain += math.log(W.next_word_probs(t)[EOS])
        assert W.logprob(t) == pytest.approx(chain, abs=1e-9)


def _brute_force_prob(words):
    """p(text, <eos>) by enumerating every latent path of the machine (no dynamic programming)."""
    total = 0.0
    stack = [(q, p, 0) for q, p in _start_distribution().items()]
    while stack:
        q, p, i = stack.pop()
        for w, nxt, pa in _arcs(q):
            if i == len(words):
                if w == EOS:
                    total += p * pa
            elif w == words[i]:
                stack.append((nxt, p * pa, i + 1))
    return total


@pytest.mark.parametrize("text", [
    "i loved the acting .",
    "the music was quite loud , but the plot was clever .",
    "honestly , the plot was not very clever and the jokes were stale , but i loved the cast . a must see .",
])
def test_forward_algorithm_equals_brute_force_path_sum(text):
    assert W.logprob(text) == pytest.approx(math.log(_brute_force_prob(text.split())), abs=1e-9)


def test_forward_equals_brute_force_on_samples(samples):
    for t in samples[:30]:
        assert W.logprob(t) == pytest.approx(math.log(_brute_force_prob(t.split())), abs=1e-9)


def test_sampled_next_word_frequencies_agree_with_next_word_probs(samples):
    """Chi-square goodness of fit of the first, second and third words (fixed seeds)."""
    texts = W.sample(10000, seed=7)
    for prefix in ("", "the", "i"):
        k = len(prefix.split())
        follow = Counter()
        for t in texts:
            words = t.split() + [EOS]
            if words[:k] == prefix.split():
                follow[words[k]] += 1
        n = sum(follow.values())
        assert n > 500, (prefix, n)
        probs = W.next_word_probs(prefix)
        assert set(follow) <= set(probs)
        # pool rare words so every expected count is >= 5
        obs, exp, rest_o, rest_e = [], [], 0, 0.0
        for w, p in probs.items():
            if n * p >= 5:
                obs.append(follow[w])
                exp.append(n * p)
            else:
                rest_o += follow[w]
                rest_e += n * p
        if rest_e > 0:
            obs.append(rest_o)
            exp.append(rest_e)
        pvalue = stats.chisquare(obs, np.array(exp) * sum(obs) / sum(exp)).pvalue
        assert pvalue > 1e-3, (prefix, pvalue)


def test_monte_carlo_entropy_rate_agrees_with_exact():
    texts = W.sample(8000, seed=11)
    nll = np.array([-W.logprob(t) for t in texts])
    events = np.array([W.num_events(t) for t in texts])
    est = nll.sum() / events.sum()
    # standard error of a ratio estimator (delta method)
    resid = nll - est * events
    se = resid.std(ddof=1) * math.sqrt(len(texts)) / events.sum()
    exact = W.entropy_rate()
    assert abs(est - exact) < 4 * se, (est, exact, se)
    assert W.cross_entropy(texts) == pytest.approx(est)
    assert events.mean() == pytest.approx(W.expected_length(), rel=0.03)


def _latent_path_stats():
    """(H(path), E[T+1]) of the machine's latent paths, by plain forward propagation of state mass.

    Independent of the world's belief-state computation: no forward vectors, no merging. A text
    has the same length as every path that writes it, so E[T+1] is exactly the world's expected
    length; a text is a function of its path, so H(text) <= H(path) (equality iff unambiguous).
    """
    layer = dict(_start_distribution())
    h_path = -sum(p * math.log(p) for p in layer.values())
    events = 0.0
    while layer:
        nxt = {}
        for q, mass in layer.items():
            events += mass  # one prediction event (a word or the end) per visit
            for w, q2, pa in _arcs(q):
                h_path -= mass * pa * math.log(pa)
                if w != EOS:
                    nxt[q2] = nxt.get(q2, 0.0) + mass * pa
        layer = nxt
    return h_path, events


def test_expected_length_and_entropy_against_the_latent_paths():
    h_path, events = _latent_path_stats()
    assert W.expected_length() == pytest.approx(events, rel=1e-9)
    h_text = W.entropy_rate() * W.expected_length()
    # the text hides some of the path (which latent sentiment wrote a neutral word): strictly less
    assert h_text < h_path
    assert h_text > 0.9 * h_path, (h_text, h_path)


def test_entropy_rate_is_the_floor_under_a_fitted_model():
    """A bigram model fitted on other samples has a higher cross-entropy on held-out texts than the
    world's entropy rate (Gibbs' inequality), and than the world's own cross-entropy on them."""
    train, held_out = W.sample(4000, seed=31), W.sample(2000, seed=32)
    counts, totals = Counter(), Counter()
    for t in train:
        words = [None] + t.split() + [EOS]
        counts.update(zip(words, words[1:]))
        totals.update(words[:-1])
    V = len(W.vocab)
    nll = events = 0.0
    for t in held_out:
        words = [None] + t.split() + [EOS]
        for a, b in zip(words, words[1:]):  # add-one smoothing: every word possible
            nll -= math.log((counts[a, b] + 1) / (totals[a] + V))
            events += 1
    bigram = nll / events
    assert W.entropy_rate() < W.cross_entropy(held_out) + 0.05 < bigram, (W.entropy_rate(), bigram)


def test_posteriors_average_to_the_prior(samples):
    """E_x[p(s | x)] = p(s): a check of Bayes' rule that does not use the forward code's output order."""
    post = np.array([[W.sentiment_posterior(t)[v] for v in SENTIMENTS] for t in samples])
    prior = np.array([0.3, 0.2, 0.2, 0.3])
    se = post.std(0, ddof=1) / math.sqrt(len(samples))
    assert np.all(np.abs(post.mean(0) - prior) < 4 * se + 1e-3), (post.mean(0), prior)
    rewards = np.array([W.sentiment(t) for t in samples])
    assert np.all(rewards >= -1) and np.all(rewards <= 1)
    assert np.allclose(rewards, post @ np.array(SENTIMENTS))


def test_sentiment_moves_the_right_way_under_negation_contrast_and_intensifiers():
    s = W.sentiment
    assert s("the acting was good .") > 0.3
    assert s("the acting was not good .") < -0.3
    assert s("the acting was bad .") < -0.3
    assert s("the acting was not bad .") > 0.3
    # contrast: the clause after ", but" carries the review
    assert s("the acting was good , but the plot was awful .") < -0.5
    assert s("the acting was awful , but the plot was good .") > 0.3
    # intensifiers and strong words push towards the extremes
    assert s("the acting was very good .") > s("the acting was good .")
    assert s("the acting was brilliant .") > s("the acting was good .")
    assert s("the acting was terrible .") < s("the acting was bad .")
    assert s("i loved the acting . a must see .") > 0.95


def test_impossible_texts_and_bad_input():
    for bad in ("", "the acting was", "acting the was good .", "the acting was great .",
                "the acting was good", "the acting was good . <eos>"):
        assert W.logprob(bad) == -math.inf, bad
        assert not W.is_grammatical(bad)
    assert W.sentiment("the acting was") == -1.0  # documented: no posterior -> worst reward
    with pytest.raises(TypeError, match="text"):
        W.logprob(None)
    with pytest.raises(TypeError, match="text"):
        W.logprob(["the", "acting"])
    with pytest.raises(TypeError, match="prefix"):
        W.next_word_probs(3)
    with pytest.raises(ValueError, match="prefix"):
        W.next_word_probs("acting the")
    with pytest.raises(ValueError, match="n"):
        W.sample(-1)
    with pytest.raises(TypeError, match="seed"):
        W.sample(2, seed="x")


def test_next_word_vector_and_probs_to_dict():
    vec = W.next_word_vector("the acting")
    assert vec.shape == (len(W.vocab),) and vec.sum() == pytest.approx(1.0)
    assert W.probs_to_dict(vec) == pytest.approx(W.next_word_probs("the acting"))


def test_complete_samples_from_the_conditional(samples):
    outs = W.complete("the acting was not", 200, seed=1)
    assert all(t.startswith("the acting was not ") and W.is_grammatical(t) for t in outs)
    # after "not" a negated clause follows: the adjective flips polarity
    assert np.mean([W.sentiment(t) for t in W.complete("i loved the acting .", 300, seed=2)]) > 0.5


def test_most_probable_reviews_are_exact_and_ordered(samples):
    top = W.most_probable(5)
    assert len(top) == 5
    lps = [lp for _, lp in top]
    assert lps == sorted(lps, reverse=True)
    for text, lp in top:
        assert W.logprob(text) == pytest.approx(lp, abs=1e-9)
    assert max(W.logprob(t) for t in samples) <= lps[0] + 1e-12
    # none is missed: every sampled review more probable than the last of the top 25 is among them
    # (the 20 "i adored the X ." tie at the top, and 3000 samples contain many of them)
    top = W.most_probable(25)
    texts, last = {text for text, _ in top}, top[-1][1]
    above = {t for t in samples if W.logprob(t) > last + 1e-9}
    assert above <= texts and len(above) >= 5, (above - texts, len(above))


def test_instructions_are_followed_by_their_gold_responses():
    pairs = W.instructions(200, seed=5)
    assert len(pairs) == 200
    scores = [W.instruction_score(i, r) for i, r in pairs]
    assert np.mean(scores) > 0.8
    for instruction, response in pairs[:50]:
        words = instruction.split()
        topic, request = words[-2], " ".join(words[2:-5])
        assert W.is_grammatical(response)
        # the response discusses the topic first
        assert topic in response.split()[: response.split().index(topic) + 1]
        flipped = request.replace("negative", "X").replace("positive", "negative").replace("X", "positive")
        assert W.instruction_score(W.make_instruction(flipped, topic), response) < 0.5
    other = "write a positive review about the music :"
    assert W.instruction_score(other, "i loved the acting .") == 0.0
    with pytest.raises(ValueError, match="instruction"):
        W.instruction_score("write something", "i loved the acting .")


def test_preferences_follow_bradley_terry_noise_and_length_bias():
    clean = W.preferences(300, seed=1, noise=0.0, beta=50.0)
    assert set(clean[0]) == {"prompt", "chosen", "rejected"}
    gold = lambda d, key: W.sentiment(d["prompt"] + d[key])  # noqa: E731
    agree = np.mean([gold(d, "chosen") >= gold(d, "rejected") for d in clean])
    assert agree > 0.95
    noisy = W.preferences(300, seed=1, noise=0.5, beta=50.0)
    assert 0.35 < np.mean([gold(d, "chosen") >= gold(d, "rejected") for d in noisy]) < 0.65
    long = W.preferences(300, seed=2, noise=0.0, length_bias=1.0, beta=5.0)
    assert np.mean([len(d["chosen"].split()) >= len(d["rejected"].split()) for d in long]) > 0.9
    for d in clean[:20]:
        assert W.is_grammatical(d["prompt"] + d["chosen"]) and W.is_grammatical(d["prompt"] + d["rejected"])
    with pytest.raises(ValueError, match="noise"):
        W.preferences(2, noise=0.9)


# ---------------------------------------------------------------- posteriors after a prefix (process labels)
PREFIX_CASES = [
    ("write a positive review about the acting :", "the acting was not very good , but the plot was gripping ."),
    ("write a very negative review about the plot :", "sadly , the plot was truly awful . avoid it"),
    ("write a negative review about the music :", "i did not like the music , but the ending was"),
    ("write a very positive review about the film :", "honestly , the film was"),
]


def test_prefix_instruction_scores_end_in_instruction_score_and_start_at_the_prior():
    pairs = W.instructions(40, seed=5) + [(x, y) for x, y in PREFIX_CASES if W.is_grammatical(y)]
    for instruction, response in pairs:
        for x in (instruction, instruction.replace("positive", "negative")):
            steps = W.prefix_instruction_scores(x, response)
            assert steps.shape == (len(response.split()) + 2,)
            assert steps[-1] == pytest.approx(W.instruction_score(x, response), abs=1e-12)
            # the prior p(S_req) p(topic): sentiment prior (0.3, 0.2, 0.2, 0.3), 20 aspects
            prior = (0.3 if "very" in x else 0.5) / 20
            assert steps[0] == pytest.approx(prior, abs=1e-12)
            assert W.prefix_instruction_score(x, "") == pytest.approx(prior, abs=1e-12)
            assert np.all((steps >= 0) & (steps <= 1))
    assert W.prefix_sentiment_posterior("") == pytest.approx(dict(zip(SENTIMENTS, (0.3, 0.2, 0.2, 0.3))))


def test_prefix_posteriors_are_martingales_one_word_ahead():
    """posterior(prefix) = sum_w p(w | prefix) posterior(prefix w), the end event scored by the
    complete-text posteriors (sentiment_posterior, instruction_score): exact, for every next word."""
    for instruction, response in PREFIX_CASES:
        words = response.split()
        for t in (0, 2, len(words) - 1, len(words)):
            prefix = " ".join(words[:t])
            nxt = W.next_word_probs(prefix)
            expect_x, expect_s = 0.0, np.zeros(4)
            for w, p in nxt.items():
                if w == EOS:
                    expect_x += p * W.instruction_score(instruction, prefix)
                    expect_s += p * np.array([W.sentiment_posterior(prefix)[v] for v in SENTIMENTS])
                else:
                    expect_x += p * W.prefix_instruction_score(instruction, f"{prefix} {w}")
                    expect_s += p * np.array([W.prefix_sentiment_posterior(f"{prefix} {w}")[v] for v in SENTIMENTS])
            assert W.prefix_instruction_score(instruction, prefix) == pytest.approx(expect_x, abs=1e-10)
            got = W.prefix_sentiment_posterior(prefix)
            assert np.allclose([got[v] for v in SENTIMENTS], expect_s, atol=1e-10)


def _completions(prefix: str, depth: int):
    """Every completion of ``prefix`` with its exact probability (brute force over next words)."""
    for w, p in W.next_word_probs(prefix).items():
        if w == EOS:
            yield prefix, p
        else:
            assert depth > 0, "the enumeration is too deep for this prefix"
            for text, q in _completions(f"{prefix} {w}", depth - 1):
                yield text, p * q


def test_prefix_instruction_score_equals_brute_force_over_completions():
    instruction = "write a very positive review about the acting :"
    for prefix in ("the acting was truly amazing .", "i hated the acting , but the plot was clever .",
                   "the acting was good ."):
        completions = list(_completions(prefix, depth=6))
        assert sum(p for _, p in completions) == pytest.approx(1.0, abs=1e-12)
        expect = sum(p * W.instruction_score(instruction, text) for text, p in completions)
        assert W.prefix_instruction_score(instruction, prefix) == pytest.approx(expect, abs=1e-12)


def test_prefix_instruction_score_is_the_mean_final_score_of_sampled_completions():
    for instruction, response in PREFIX_CASES:
        words = response.split()
        prefix = " ".join(words[: len(words) // 2])
        finals = np.array([W.instruction_score(instruction, y) for y in W.complete(prefix, 500, seed=7)])
        se = finals.std(ddof=1) / math.sqrt(len(finals))
        exact = W.prefix_instruction_score(instruction, prefix)
        assert abs(finals.mean() - exact) < 4 * se + 1e-9, (prefix, finals.mean(), exact, se)


def test_prefix_posteriors_of_impossible_prefixes_and_bad_input():
    steps = W.prefix_instruction_scores("write a positive review about the acting :", "the acting was was good .")
    assert steps[3] > 0 and np.all(steps[4:] == 0.0)
    assert W.prefix_sentiment_posterior("was was") == {}
    with pytest.raises(TypeError, match="response"):
        W.prefix_instruction_scores("write a positive review about the acting :", None)
    with pytest.raises(TypeError, match="prefix"):
        W.prefix_sentiment_posterior(3)
    with pytest.raises(ValueError, match="instruction"):
        W.prefix_instruction_score("write something", "the")
