"""Tests of rl4lmt.reward against independent references.

- the Bradley-Terry loss and the last-token score against TRL's RewardTrainer.compute_loss and
  transformers' GPT2ForSequenceClassification on the same padded batch;
- the K-wise loss against a loop over all C(K, 2) pairs;
- the annotators' Plackett-Luce rankings against the Bradley-Terry pair probabilities (Monte Carlo,
  tolerance of 4.5 standard errors), the Bayes ceiling against every possible classifier;
- best-of-n: the expectation estimator against enumerating every n-subset, the KL formula against
  an exact computation on a fine discrete distribution and against a Monte Carlo estimate with the
  world's exact probabilities;
- the preference data against a recomputation from the world; the shipped reward model on fresh
  held-out pairs against the Bayes ceiling.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from rl4lmt import reward, zoo
from rl4lmt.world import TinyReviews


@pytest.fixture(scope="module")
def world():
    return TinyReviews()


@pytest.fixture(scope="module")
def rm_and_tok():
    torch.set_num_threads(1)
    return reward.reward_model_from_lm("tiny-reviews", seed=0, device="cpu")


TRIPLES = {
    "prompt": ["write a positive review about the music :", "write a very negative review about the acting :",
               "write a negative review about the plot :"],
    "chosen": [" the music was great . <eos>", " the acting was awful . avoid it . <eos>", " i hated the plot . <eos>"],
    "rejected": [" the music was bad , but the plot was very good . a must see . <eos>", " <eos>",
                 " the plot was good . <eos>"],
}


# ----------------------------------------------------------------------------------------------
# loss and scores against TRL and transformers
# ----------------------------------------------------------------------------------------------
def test_bradley_terry_loss_equals_trl_reward_trainer(rm_and_tok, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rm, tok = rm_and_tok
    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=3)
    trainer = RewardTrainer(model=rm, args=args, train_dataset=Dataset.from_dict(TRIPLES), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    # the rows TRL built: <bos> prompt response <eos>, right-padded, chosen first
    assert batch["input_ids"].shape[0] == 6 and (batch["attention_mask"][:, -1] == 0).any()
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, dict(batch))
        hidden = rm.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        r = reward.last_token_scores(rm.score(hidden).squeeze(-1), batch["attention_mask"])
        got, info = reward.bradley_terry_loss(r[:3], r[3:])
    torch.testing.assert_close(got, want)
    assert info["accuracy"] == float((r[:3] > r[3:]).float().mean())
    # and rl4lmt.reward.score reads the same numbers from the texts
    s_c = reward.score(rm, tok, TRIPLES["prompt"], [c[:-6].strip() for c in TRIPLES["chosen"]])
    torch.testing.assert_close(s_c, r[:3].float())


def test_last_token_scores_equal_sequence_classification(rm_and_tok):
    rm, tok = rm_and_tok
    enc = tok(["the movie was good .", "i hated it", "the plot was not very clever , but the ending was moving ."],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        want = rm(**enc).logits[:, 0]
        values = rm.score(rm.transformer(**enc).last_hidden_state).squeeze(-1)
    torch.testing.assert_close(reward.last_token_scores(values, enc["attention_mask"]), want)
    # the classic mistake reads the pad position
    assert not torch.allclose(values[:, -1], want)
    # left padding: the last real token is the last column
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    torch.testing.assert_close(reward.last_token_scores(v, left), torch.tensor([3.0, 6.0]))
    right = torch.tensor([[1, 0, 0], [1, 1, 0]])
    torch.testing.assert_close(reward.last_token_scores(v, right), torch.tensor([1.0, 5.0]))
    with pytest.raises(ValueError, match="attention_mask"):
        reward.last_token_scores(v, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        reward.last_token_scores(v, torch.ones(2, 2))


def test_bradley_terry_loss_is_stable_and_checks_input():
    rc = torch.tensor([0.0, 200.0, -200.0], dtype=torch.float32)
    rr = torch.zeros(3)
    loss, info = reward.bradley_terry_loss(rc, rr)
    # -log sigma(m) for m = 0, 200, -200: log 2, ~0, 200 (log(sigmoid(-200)) is -inf in float32)
    want = (math.log(2) + 0.0 + 200.0) / 3
    assert math.isfinite(loss.item()) and abs(loss.item() - want) < 1e-4
    assert torch.isinf(torch.log(torch.sigmoid(torch.tensor(-200.0))))
    assert info["accuracy"] == pytest.approx(1 / 3)  # the tie (margin 0) is not a win
    # gradient: d/dm of -log sigma(m) = -(1 - sigma(m)), averaged over B
    rc = torch.tensor([1.0, -2.0], requires_grad=True)
    reward.bradley_terry_loss(rc, torch.zeros(2))[0].backward()
    torch.testing.assert_close(rc.grad, -(1 - torch.sigmoid(torch.tensor([1.0, -2.0]))) / 2)
    with pytest.raises(ValueError, match="r_chosen"):
        reward.bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(TypeError, match="r_chosen"):
        reward.bradley_terry_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(TypeError, match="r_rejected"):
        reward.bradley_terry_loss(torch.zeros(3), [0.0, 0.0, 0.0])


def test_kwise_loss_is_the_mean_over_all_pairs():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 4, generator=g)
    rankings = torch.stack([torch.randperm(4, generator=g) for _ in range(5)])
    terms = []
    for p in range(5):
        for w, lo in reward.ranking_pairs(rankings[p].tolist()):
            terms.append(-math.log(1 / (1 + math.exp(-(scores[p, w] - scores[p, lo]).item()))))
    assert len(terms) == 5 * math.comb(4, 2)
    assert reward.kwise_bradley_terry_loss(scores, rankings).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # K = 2 is the pairwise loss
    two = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    got = reward.kwise_bradley_terry_loss(two, torch.tensor([[0, 1], [1, 0]]))
    want = reward.bradley_terry_loss(torch.tensor([0.3, 0.5]), torch.tensor([-1.2, 2.0]))[0]
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="rankings"):
        reward.kwise_bradley_terry_loss(scores, rankings[:, :3])


def test_ranking_pairs():
    assert reward.ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    assert len(reward.ranking_pairs(list(range(6)))) == 15
    with pytest.raises(ValueError, match="ranking"):
        reward.ranking_pairs([1, 1])


# ----------------------------------------------------------------------------------------------
# annotators, accuracy, ceiling
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_plackett_luce_rankings_have_bradley_terry_pairs(noise):
    ann = reward.Annotators(beta=2.0, noise=noise, length_bias=0.0)
    u = np.array([0.0, 0.3, 1.0, -0.5])
    rng = np.random.default_rng(1)
    n = 20_000
    above = np.zeros((4, 4))
    for _ in range(n):
        pos = np.empty(4, int)
        pos[ann.rank(u, rng)] = np.arange(4)
        above += pos[:, None] < pos[None, :]
    for i, j in itertools.combinations(range(4), 2):
        p = 1 / (1 + math.exp(-2.0 * (u[i] - u[j])))
        p = (1 - noise) * p + noise * (1 - p)  # each comparison flipped with probability noise
        se = math.sqrt(p * (1 - p) / n)
        assert abs(above[i, j] / n - p) < 4.5 * se, (i, j, above[i, j] / n, p)
        assert ann.prob_prefer(u[i], u[j]) == pytest.approx(p)


def test_annotators_check_input():
    with pytest.raises(ValueError, match="noise"):
        reward.Annotators(noise=0.7)
    with pytest.raises(ValueError, match="beta"):
        reward.Annotators(beta=-1.0)
    with pytest.raises(TypeError, match="length_bias"):
        reward.Annotators(length_bias="long")
    with pytest.raises(ValueError, match="utilities"):
        reward.Annotators().rank([1.0], np.random.default_rng(0))
    assert reward.Annotators(length_bias=0.1).utility([0.5, 0.0], [3, 10]).tolist() == pytest.approx([0.8, 1.0])


def test_bayes_ceiling_is_the_best_classifier():
    p = np.array([0.9, 0.3, 0.5, 0.62])
    # every deterministic classifier (which label it predicts for each pair), expected accuracy exact
    best = max(np.mean(np.where(np.array(c), p, 1 - p)) for c in itertools.product([0, 1], repeat=4))
    assert reward.bayes_ceiling(p) == pytest.approx(best)
    assert reward.bayes_ceiling([0.5, 0.5]) == 0.5 and reward.bayes_ceiling([0.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match="p_chosen"):
        reward.bayes_ceiling([1.2])


def test_within_prompt_correlation_is_the_fixed_effects_correlation():
    rng = np.random.default_rng(0)
    groups = rng.choice(["a", "b", "c", "d", "e"], 40)
    x, y = rng.normal(size=40), rng.normal(size=40)
    y = y + 0.7 * x
    # independent reference: residuals of least squares on one dummy column per group
    dummies = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    res = lambda v: v - dummies @ np.linalg.lstsq(dummies, v, rcond=None)[0]  # noqa: E731
    want = np.corrcoef(res(x), res(y))[0, 1]
    assert reward.within_prompt_correlation(groups, x, y) == pytest.approx(want, abs=1e-12)
    # a Bradley-Terry reward's per-prompt offset is arbitrary: shifting each group changes nothing
    shift = {g: rng.normal(scale=100.0) for g in np.unique(groups)}
    shifted = x + np.array([shift[g] for g in groups])
    assert reward.within_prompt_correlation(groups, shifted, y) == pytest.approx(want, abs=1e-9)
    assert abs(np.corrcoef(shifted, y)[0, 1] - want) > 0.1  # the pooled correlation is not
    # one group: the ordinary Pearson correlation
    assert reward.within_prompt_correlation(["p"] * 40, x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    with pytest.raises(ValueError, match="one length"):
        reward.within_prompt_correlation(groups[:3], x, y)
    with pytest.raises(ValueError, match="does not vary"):
        reward.within_prompt_correlation(list(range(40)), x, y)  # every group a singleton


def test_pairwise_accuracy_ties_are_not_wins():
    assert reward.pairwise_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == 0.5
    assert reward.pairwise_accuracy(torch.zeros(5), torch.zeros(5)) == 0.0  # a constant RM
    # TRL's metric on the same numbers
    rc, rr = torch.randn(50, generator=torch.Generator().manual_seed(0)), torch.zeros(50)
    assert reward.pairwise_accuracy(rc, rr) == pytest.approx((rc > rr).float().mean().item())
    with pytest.raises(ValueError, match="r_chosen"):
        reward.pairwise_accuracy([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# best-of-n
# ----------------------------------------------------------------------------------------------
def test_best_of_n_picks_the_first_maximum():
    s = torch.tensor([[0.1, 0.5, 0.5], [3.0, -1.0, 2.0]])
    assert reward.best_of_n(s).tolist() == [1, 0]
    with pytest.raises(ValueError, match="scores"):
        reward.best_of_n(torch.zeros(3))


def test_best_of_n_expectation_enumerates_subsets():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in (1, 3, 7):
        want = [np.mean([gold[m, max(sub, key=lambda i: proxy[m, i])] for sub in itertools.combinations(range(7), n)])
                for m in range(3)]
        np.testing.assert_allclose(reward.best_of_n_expectation(proxy, gold, n), want, rtol=1e-10)
    with pytest.raises(ValueError, match="n must"):
        reward.best_of_n_expectation(proxy, gold, 8)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_best_of_n_kl_formula_exact_on_a_fine_distribution(n):
    # best-of-n over a uniform distribution on m ranked items: pi_bon(i) = (i/m)^n - ((i-1)/m)^n
    m = 200_000
    i = np.arange(1, m + 1, dtype=np.float64)
    p_bon = (i / m) ** n - ((i - 1) / m) ** n
    keep = p_bon > 0
    kl = float(np.sum(p_bon[keep] * np.log(p_bon[keep] * m)))
    assert reward.best_of_n_kl(n) == pytest.approx(kl, abs=1e-3)
    assert kl <= reward.best_of_n_kl(n) + 1e-9  # an upper bound for a discrete distribution


def test_best_of_n_kl_formula_is_not_log_n():
    assert reward.best_of_n_kl(1) == 0.0
    assert reward.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n"):
        reward.best_of_n_kl(0)


def test_best_of_n_kl_monte_carlo_with_the_worlds_probabilities(world):
    from functools import lru_cache

    utility = lru_cache(maxsize=None)(world.sentiment)
    kl, se = reward.best_of_n_kl_monte_carlo(world, utility, 4, n_reference=3000, n_draws=400, seed=0)
    # the world's reviews are discrete (frequent texts tie), so the formula is an upper bound;
    # the empirical CDF adds an error of about 1/sqrt(n_reference) to F
    assert abs(kl - reward.best_of_n_kl(4)) < 4.5 * se + 0.05, (kl, se)


# ----------------------------------------------------------------------------------------------
# preference data, training, the shipped model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(world):
    policy, tok = zoo.load("tiny-reviews", device="cpu")
    ann = reward.Annotators(beta=10.0, noise=0.1, length_bias=0.05)
    return reward.preference_data(policy, tok, world, 12, k=4, annotators=ann, seed=3), ann, tok


def test_preference_data_matches_the_world(world, small_data):
    data, ann, tok = small_data
    assert {"prompt", "chosen", "rejected"} <= set(data.column_names)  # TRL's explicit-prompt format
    counts = np.bincount(data["prompt_id"])
    assert counts.max() <= math.comb(4, 2) and len(counts) <= 12
    for row in data:
        assert row["chosen"].startswith(" ") and row["chosen"].endswith(" " + tok.eos_token)
        c, r = row["chosen"][1:-6], row["rejected"][1:-6]
        assert c != r
        gc, gr = world.instruction_score(row["prompt"], c), world.instruction_score(row["prompt"], r)
        assert (row["gold_chosen"], row["gold_rejected"]) == (pytest.approx(gc), pytest.approx(gr))
        assert (row["len_chosen"], row["len_rejected"]) == (len(c.split()), len(r.split()))
        d = 10.0 * ((gc + 0.05 * len(c.split())) - (gr + 0.05 * len(r.split())))
        assert row["p_chosen"] == pytest.approx(0.9 / (1 + math.exp(-d)) + 0.1 / (1 + math.exp(d)))
    again = reward.preference_data(zoo.load("tiny-reviews", device="cpu")[0], tok, world, 12, k=4,
                                   annotators=ann, seed=3)
    assert again["chosen"] == data["chosen"] and again["rejected"] == data["rejected"]


def test_sample_responses_uses_the_policys_distribution():
    # a response is exactly decoding.sample's continuation up to the EOS
    from rl4lmt import decoding

    policy, tok = zoo.load("tiny-reviews", device="cpu")
    x = "write a positive review about the music :"
    got = reward.sample_responses(policy, tok, [x], 5, max_new_tokens=30, generator=torch.Generator().manual_seed(7))
    ids = torch.tensor([tok(x)["input_ids"]] * 5)
    out = decoding.sample(policy, ids, 30, generator=torch.Generator().manual_seed(7),
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    want = []
    for row in out[:, ids.shape[1]:].tolist():
        words = tok.convert_ids_to_tokens(row)
        cut = [i for i, w in enumerate(words) if w in tok.all_special_tokens]
        want.append(" ".join(words[: cut[0] if cut else len(words)]))
    assert got == [want]


def test_from_scratch_loop_learns(small_data, rm_and_tok):
    import copy

    data, _, tok = small_data
    rm = copy.deepcopy(rm_and_tok[0])
    before = [p.detach().clone() for p in rm.parameters()]
    hist = reward.train_bradley_terry(rm, tok, data, steps=15, batch_size=16, lr=3e-3, progress=False)
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert np.mean([h["loss"] for h in hist[-5:]]) < hist[0]["loss"]
    assert all(not torch.equal(a, b) for a, b in zip(before, rm.parameters()))


def test_reward_model_from_lm_keeps_the_transformer_and_the_callers_rng():
    lm, _ = zoo.load("tiny-reviews", device="cpu")
    state = torch.random.get_rng_state()
    rm, tok = reward.reward_model_from_lm("tiny-reviews", seed=0, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    for (n1, p1), (n2, p2) in zip(lm.transformer.named_parameters(), rm.transformer.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    rm2, _ = reward.reward_model_from_lm("tiny-reviews", seed=0, device="cpu")
    assert torch.equal(rm.score.weight, rm2.score.weight)


def test_shipped_reward_model_loads_and_is_near_the_ceiling(world):
    from transformers import GPT2ForSequenceClassification

    rm, tok = zoo.load("tiny-reviews-rm", device="cpu")
    assert isinstance(rm, GPT2ForSequenceClassification) and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    import json

    cfg = json.loads((zoo.checkpoint_dir("tiny-reviews-rm") / "training.json").read_text())["config"]
    policy, ptok = zoo.load(cfg["policy"], device="cpu")
    ann = reward.Annotators(beta=cfg["beta"], noise=cfg["noise"], length_bias=cfg["length_bias"])
    # fresh held-out pairs (a seed the recipe never used)
    data = reward.preference_data(policy, ptok, world, 60, k=cfg["k"], annotators=ann, seed=987)
    rc = reward.score(rm, tok, data["prompt"], [c[1:-6] for c in data["chosen"]])
    rr = reward.score(rm, tok, data["prompt"], [r[1:-6] for r in data["rejected"]])
    acc, ceiling = reward.pairwise_accuracy(rc, rr), reward.bayes_ceiling(data["p_chosen"])
    # ~300 pairs: the sampling error of an accuracy is ~0.027 (the recipe measures ~0.66 against a
    # ceiling of ~0.75 on 2993 pairs); well above chance, and no model beats the ceiling by much
    assert 0.6 < acc < ceiling + 0.06, (acc, ceiling)
    # it inherited the annotators' taste for length: its score rises with the number of words
    lengths = np.array(list(data["len_chosen"]) + list(data["len_rejected"]))
    assert np.corrcoef(lengths, np.concatenate([rc.numpy(), rr.numpy()]))[0, 1] > 0.2
    # evaluate() reports the same accuracy and ceiling, and its within-prompt correlation with gold
    # is positive (the recipe's 500 held-out prompts give ~0.37) while the pooled one need not be
    ev = reward.evaluate(rm, tok, data)
    assert (ev["accuracy"], ev["ceiling"]) == (pytest.approx(acc), pytest.approx(ceiling))
    rows = {}
    for x, c, r, s_c, s_r, g_c, g_r in zip(data["prompt"], data["chosen"], data["rejected"], rc.tolist(),
                                          rr.tolist(), data["gold_chosen"], data["gold_rejected"]):
        rows[(x, c)], rows[(x, r)] = (s_c, g_c), (s_r, g_r)
    xs, sg = [k[0] for k in rows], np.array(list(rows.values()))
    assert ev["pearson_within"] == pytest.approx(reward.within_prompt_correlation(xs, sg[:, 0], sg[:, 1]), abs=1e-6)
    assert ev["pearson_within"] > 0.1, ev


# ----------------------------------------------------------------------------------------------
# outcome and process supervision
# ----------------------------------------------------------------------------------------------
def test_step_label_loss_equals_torch_bce_and_a_hand_computation():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    labels = torch.rand(3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    got = reward.step_label_loss(logits, labels, mask)
    lib = F.binary_cross_entropy_with_logits(logits[mask], labels[mask])
    assert got.item() == pytest.approx(lib.item(), abs=1e-12)
    by_hand = [-(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))
               for z, y, m in zip(logits.flatten().tolist(), labels.flatten().tolist(), mask.flatten().tolist()) if m]
    assert got.item() == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-12)
    # the gradient of the mean BCE is (sigma(z) - y) / |M| at labelled steps, 0 elsewhere
    z = logits.clone().requires_grad_(True)
    reward.step_label_loss(z, labels, mask).backward()
    assert torch.allclose(z.grad, torch.where(mask, (torch.sigmoid(logits) - labels) / mask.sum(), 0.0))
    # float32 and huge logits stay finite; unmasked positions do not matter
    big = torch.tensor([[300.0, -300.0, float("nan")]])
    out = reward.step_label_loss(big, torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([[True, True, False]]))
    assert out.item() == pytest.approx(300.0)
    with pytest.raises(ValueError, match="label_mask"):
        reward.step_label_loss(logits, labels, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="labels"):
        reward.step_label_loss(logits, labels[:, :2], mask)


def test_aggregate_steps():
    probs = [np.array([0.9, 0.2, 0.8]), np.array([0.5]), [0.6, 0.7]]
    assert np.allclose(reward.aggregate_steps(probs, "min"), [0.2, 0.5, 0.6])
    assert np.allclose(reward.aggregate_steps(probs, "last"), [0.8, 0.5, 0.7])
    assert np.allclose(np.exp(reward.aggregate_steps(probs, "product")), [0.9 * 0.2 * 0.8, 0.5, 0.6 * 0.7])
    # product ranks a short confident response above a long one with the same steps plus one more
    assert reward.aggregate_steps([[0.9, 0.9], [0.9, 0.9, 0.9]], "product").argmax() == 0
    with pytest.raises(ValueError, match="how"):
        reward.aggregate_steps(probs, "mean")
    with pytest.raises(ValueError, match="step_probs"):
        reward.aggregate_steps([np.array([])], "min")


def test_off_task_instructions_repairs_a_share_with_other_requests():
    xs = [f"write a positive review about the {a} :" for a in ("plot", "music", "acting", "ending", "jokes")] * 4
    assert reward.off_task_instructions(xs, 0.0, seed=1) == xs
    everything = reward.off_task_instructions(xs, 1.0, seed=1)
    assert sorted(everything) == sorted(xs)  # the same requests, handed round
    moved = [i for i, (a, b) in enumerate(zip(xs, everything)) if a != b]
    assert len(moved) >= 12  # only a response given a copy of its own request keeps it
    quarter = reward.off_task_instructions(xs, 0.25, seed=1)
    assert sum(a != b for a, b in zip(xs, quarter)) <= 5 and sorted(quarter) == sorted(xs)
    assert reward.off_task_instructions(xs, 0.25, seed=1) == quarter != reward.off_task_instructions(xs, 0.25, seed=2)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="share"):
            reward.off_task_instructions(xs, bad)


def test_step_label_batch_puts_the_worlds_posteriors_at_the_right_tokens(world):
    _, tok = zoo.load("tiny-reviews", device="cpu")
    xs = ["write a positive review about the acting :", "write a very negative review about the music :"]
    ys = ["the acting was not very good , but the plot was gripping .", "i hated the music . avoid it"]
    batch = reward.step_label_batch(tok, world, xs, ys)
    for i, (x, y) in enumerate(zip(xs, ys)):
        m = batch["label_mask"][i]
        assert tok.convert_ids_to_tokens(batch["input_ids"][i][m]) == [":"] + y.split() + [tok.eos_token]
        v = batch["labels"][i][m].double().numpy()
        words = y.split()
        for t in range(len(words) + 1):  # the label after t words is the posterior given those words
            assert v[t] == pytest.approx(world.prefix_instruction_score(x, " ".join(words[:t])), abs=1e-6)
        assert v[-1] == pytest.approx(world.instruction_score(x, y), abs=1e-6)
    outcome = reward.step_label_batch(tok, world, xs, ys, outcome_only=True)
    assert outcome["label_mask"].sum(1).tolist() == [1, 1]
    last = batch["attention_mask"].sum(1) - 1
    assert outcome["label_mask"][torch.arange(2), last].all()
    assert torch.equal(outcome["labels"][torch.arange(2), last], batch["labels"][torch.arange(2), last])
    with pytest.raises(ValueError, match="instructions and responses"):
        reward.step_label_batch(tok, world, xs, ys[:1])


def test_a_tiny_step_model_learns_the_per_prefix_posterior(world):
    from transformers import GPT2Config, GPT2ForTokenClassification

    torch.set_num_threads(1)
    _, tok = zoo.load("tiny-reviews", device="cpu")
    pairs = world.instructions(6, seed=11)
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2, num_labels=1,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, classifier_dropout=0.0)
    model = GPT2ForTokenClassification(cfg)
    batch = reward.step_label_batch(tok, world, xs, ys)
    target = [reward.process_labels(world, x, y)[1:] for x, y in zip(xs, ys)]  # the response's T + 1 steps
    err = lambda: np.mean(np.concatenate([np.abs(p - v) for p, v in  # noqa: E731
                                          zip(reward.step_scores(model, tok, xs, ys), target)]))
    before = err()
    losses = reward.train_step_model(model, batch, steps=250, batch_size=6, lr=3e-3, seed=0, progress=False)
    assert before > 0.2 and err() < 0.03, (before, err())
    assert losses[-1] < losses[0]
    # one score per response word, and one at the EOS
    assert all(len(p) == len(y.split()) + 1 for p, y in zip(reward.step_scores(model, tok, xs, ys), ys))


def test_step_model_from_lm_keeps_the_transformer_and_the_callers_rng():
    lm, tok = zoo.load("tiny-reviews", device="cpu")
    state = torch.random.get_rng_state()
    model, _ = reward.step_model_from_lm("tiny-reviews", seed=0, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    for (n1, p1), (n2, p2) in zip(lm.transformer.named_parameters(), model.transformer.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    again, _ = reward.step_model_from_lm("tiny-reviews", seed=0, device="cpu")
    other, _ = reward.step_model_from_lm("tiny-reviews", seed=1, device="cpu")
    assert torch.equal(model.classifier.weight, again.classifier.weight)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    # a causal model: the score after word t does not depend on later words
    xs = ["write a positive review about the acting :"] * 2
    a, b = reward.step_scores(model, tok, xs, ["the acting was good .", "the acting was bad , but i loved the plot ."])
    assert a.shape == (6,) and b.shape == (12,)
    assert np.allclose(a[:3], b[:3], atol=1e-6) and not np.allclose(a[3], b[3])


def test_shipped_process_reward_model_tracks_the_worlds_posterior(world):
    """tiny-reviews-prm on the policy's responses to instructions neither its recipe nor its own
    evaluation saw: per-step error against the exact posterior, far below a constant's."""
    from transformers import GPT2ForTokenClassification

    torch.set_num_threads(1)
    prm, tok = zoo.load("tiny-reviews-prm", device="cpu")
    assert isinstance(prm, GPT2ForTokenClassification) and prm.config.num_labels == 1
    policy, _ = zoo.load(reward.POLICY, device="cpu")
    x0 = [x for x, _ in world.instructions(50, seed=777)]
    y0 = reward.sample_responses(policy, tok, x0, 2, generator=torch.Generator().manual_seed(5))
    xs, ys = [x for x, yy in zip(x0, y0) for _ in yy], [y for yy in y0 for y in yy]
    pred = reward.step_scores(prm, tok, xs, ys)
    gold = [reward.process_labels(world, x, y)[1:] for x, y in zip(xs, ys)]
    p, g = np.concatenate(pred), np.concatenate(gold)
    mae, constant = np.abs(p - g).mean(), np.abs(g - np.median(g)).mean()  # the median: the best constant
    assert mae < 0.15 and mae < 0.5 * constant, (mae, constant)
    final_p, final_g = np.array([r[-1] for r in pred]), np.array([r[-1] for r in gold])
    assert np.corrcoef(final_p, final_g)[0, 1] > 0.5
    # it reads the request: the same responses answering other requests (true score mostly ~0)
    ox = reward.off_task_instructions(xs, 1.0, seed=3)
    off_p = np.array([r[-1] for r in reward.step_scores(prm, tok, ox, ys)])
    off_g = np.array([reward.gold_utility(world, x, y) for x, y in zip(ox, ys)])
    assert np.abs(off_p - off_g).mean() < 0.2 and off_p[off_g < 0.05].mean() < 0.3, (off_p.mean(), off_g.mean())
