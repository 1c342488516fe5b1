"""The ch00-world tests grade behaviour: plausible mistakes fail, other correct solutions pass.

A table for the shared harness (rl4lmt.grading.mutants): each WRONG body must fail the task's test
cell (visible + hidden tests), each RIGHT body (another correct way) must pass.
"""
from rl4lmt.grading.mutants import MutationSuite

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "chain_logprob": {
        "end of review forgotten":
            "words = text.split()\n    total = 0.0\n    for t, word in enumerate(words):\n"
            "        p = world.next_word_probs(' '.join(words[:t])).get(word, 0.0)\n        if p == 0.0:\n            return -math.inf\n"
            "        total += math.log(p)\n    return total",
        "log base 2":
            "words = text.split()\n    total = 0.0\n    for t, word in enumerate(words + [EOS]):\n"
            "        p = world.next_word_probs(' '.join(words[:t])).get(word, 0.0)\n        if p == 0.0:\n            return -math.inf\n"
            "        total += math.log2(p)\n    return total",
        "impossible text raises (KeyError)":
            "words = text.split()\n    total = 0.0\n    for t, word in enumerate(words + [EOS]):\n"
            "        total += math.log(world.next_word_probs(' '.join(words[:t]))[word])\n    return total",
        "impossible text floored at 1e-300 (finite)":
            "words = text.split()\n    total = 0.0\n    for t, word in enumerate(words + [EOS]):\n"
            "        total += math.log(max(world.next_word_probs(' '.join(words[:t])).get(word, 0.0), 1e-300))\n    return total",
        "prefix includes the word itself (off by one)":
            "words = text.split()\n    total = 0.0\n    for t, word in enumerate(words + [EOS]):\n"
            "        p = world.next_word_probs(' '.join(words[:t + 1])).get(word, 0.0)\n        if p == 0.0:\n            return -math.inf\n"
            "        total += math.log(p)\n    return total",
        "returns a 0-d NumPy array":
            "return np.array(world.logprob(text))",
    },
    "surprisal_bits": {
        "natural log (nats)": "return -world.logprob(text)",
        "sign": "return world.logprob(text) / math.log(2)",
        "log10": "return -world.logprob(text) / math.log(10)",
        "EOS forgotten": "words = text.split()\n    return -sum(math.log2(world.next_word_probs(' '.join(words[:t])).get(w, 1e-300)) for t, w in enumerate(words))",
    },
    "sample_perplexity": {
        "mean of per-text perplexities":
            "return sum(math.exp(-world.logprob(t) / (len(t.split()) + 1)) for t in texts) / len(texts)",
        "end of review not counted":
            "total = sum(world.logprob(t) for t in texts)\n    return math.exp(-total / sum(len(t.split()) for t in texts))",
        "cross-entropy, not its exp":
            "total = sum(world.logprob(t) for t in texts)\n    return -total / sum(len(t.split()) + 1 for t in texts)",
        "product of probabilities (underflows on a large sample)":
            "prob = 1.0\n    for t in texts:\n        prob *= math.exp(world.logprob(t))\n"
            "    return prob ** (-1.0 / sum(len(t.split()) + 1 for t in texts))",
        "geometric mean of per-text probabilities":
            "return math.exp(-sum(world.logprob(t) for t in texts) / len(texts))",
    },
    "prefer_probability": {
        "exp of an unshifted score (overflows for large beta)":
            "return math.exp(beta * world.sentiment(a)) / (math.exp(beta * world.sentiment(a)) + math.exp(beta * world.sentiment(b)))",
        "beta ignored": "z = 5.0 * (world.sentiment(a) - world.sentiment(b))\n    return 0.5 * (1.0 + math.tanh(z / 2))",
        "preference for b": "z = beta * (world.sentiment(b) - world.sentiment(a))\n    return 0.5 * (1.0 + math.tanh(z / 2))",
        "beta on a only": "z = beta * world.sentiment(a) - world.sentiment(b)\n    return 0.5 * (1.0 + math.tanh(z / 2))",
        "the logit, not the probability": "return beta * (world.sentiment(a) - world.sentiment(b))",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "chain_logprob": {
        "the world's own logprob": "return world.logprob(text)",
        "while loop with a prefix string":
            "prefix, total = '', 0.0\n    for word in text.split() + [EOS]:\n        p = world.next_word_probs(prefix).get(word, 0.0)\n"
            "        total = total + math.log(p) if p > 0 else -math.inf\n        if total == -math.inf:\n            break\n"
            "        prefix = (prefix + ' ' + word).strip()\n    return total",
    },
    "surprisal_bits": {
        "math.log2 of the probability": "lp = world.logprob(text)\n    return math.inf if lp == -math.inf else -lp * math.log2(math.e)",
    },
    "sample_perplexity": {
        "mean negative log-prob per event": "n = sum(len(t.split()) + 1 for t in texts)\n    return math.exp(sum(-world.logprob(t) / n for t in texts))",
        "the world's cross-entropy": "return math.exp(world.cross_entropy(texts))",
    },
    "prefer_probability": {
        "stable sigmoid by cases": "z = beta * (world.sentiment(a) - world.sentiment(b))\n    if z >= 0:\n        return 1 / (1 + math.exp(-z))\n"
                                   "    e = math.exp(z)\n    return e / (1 + e)",
        "NumPy's logaddexp": "z = beta * (world.sentiment(a) - world.sentiment(b))\n    return float(np.exp(-np.logaddexp(0.0, -z)))",
    },
}

SUITE = MutationSuite("ch00-world", WRONG, RIGHT, base=["setup", "world"])
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
