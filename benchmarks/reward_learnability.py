"""Is the gold utility learnable from the shipped reward model's data? (chapter 6, issue 12's diagnosis)

    .venv/bin/python benchmarks/reward_learnability.py [--epochs 6]

On the recipe's held-out pairs (``rl4lmt.reward.recipe_data``), the pairwise accuracy against the
annotators' labels of reward functions that know more than any reward model can:

- the annotators' own utility ``gold + lambda * length`` (the Bayes classifier: the ceiling);
- gold alone, and length alone (ties count as misses, as in ``reward.pairwise_accuracy``);
- a logistic Bradley-Terry probe on the *frozen* SFT model's last hidden state (no fine-tuning);
- ``g_hat + lambda * length``, where ``g_hat`` is the reward-model architecture (SFT trunk, scalar
  head) regressed on the *noise-free* gold utility of the training responses (no annotators, no
  noise), on half and on all of the training responses: an upper bound on what Bradley-Terry
  training on noisy pairs of the same responses can learn about gold (its R^2 on the training
  responses too: below 1 means it underfits, not only that it lacks data);
- a bag-of-words logistic model of gold (unigrams and bigrams, one weight vector per requested
  sentiment, plus "the requested aspect is named"), fitted to the same noise-free gold: another
  model family, to see whether gold is easy in a simpler representation.

Then a question about the goal "within 3 points of the ceiling":

- ``annotator_grid``: is the gap an artefact of the annotators' settings? For beta, epsilon and
  lambda on a grid, the exact ceiling of the same pairs and the expected accuracy (labels drawn
  from those annotators) of two fixed orderings: the shipped reward model's, and
  ``g_hat + lambda * length`` with the noise-free gold regression above. Neither is retrained
  per setting, so these are the orderings' gaps, not new reward models'.

Writes benchmarks/results/reward_learnability.json.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression

from rl4lmt import reward, zoo

ROOT = Path(__file__).resolve().parents[1]


def _distinct(data) -> tuple[list[str], np.ndarray]:
    """One row per distinct ``prompt + completion`` text, with its gold utility."""
    seen = {}
    for x, c, r, gc, gr in zip(data["prompt"], data["chosen"], data["rejected"], data["gold_chosen"],
                               data["gold_rejected"]):
        seen[x + c], seen[x + r] = gc, gr
    return list(seen), np.array(list(seen.values()), np.float32)


@torch.no_grad()
def _last_hidden(rm, tok, texts) -> np.ndarray:
    out = []
    for i in range(0, len(texts), 512):
        enc = tok(texts[i:i + 512], padding=True, return_tensors="pt")
        h = rm.transformer(**enc).last_hidden_state
        out.append(h[torch.arange(len(h)), enc["attention_mask"].sum(1) - 1])
    return torch.cat(out).numpy()


def _regress_gold(texts, gold, epochs: int, seed: int = 0):
    """The reward-model architecture fitted to gold by least squares (AdamW, lr 1e-3, linear decay)."""
    from tqdm.auto import tqdm

    rm, tok = reward.reward_model_from_lm(seed=seed, device="cpu")
    steps = epochs * (len(texts) // 64)
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    rng = np.random.default_rng(seed)
    rm.train()
    for _ in tqdm(range(steps), desc=f"gold regression ({len(texts)} responses)", mininterval=5):
        idx = rng.integers(0, len(texts), 64)
        enc = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
        loss = ((rm(**enc).logits[:, 0] - torch.from_numpy(gold[idx])) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return rm.eval(), tok


def _expected_accuracy(a, b, p) -> float:
    """Expected pairwise accuracy of scores ``a`` (chosen) and ``b`` (rejected) when the label is the
    chosen one with probability ``p``: a tie is a miss, as in ``reward.pairwise_accuracy``."""
    return float(np.mean(np.where(a > b, p, np.where(a < b, 1 - p, 0.0))))


def _bag_of_words_gold(train_texts, train_gold, eval_texts) -> np.ndarray:
    """Logistic regression of gold (soft labels) on word uni- and bigrams, per requested sentiment."""
    import re

    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    def split(texts):
        heads = [re.match(r"write an? (.*) review about the (\w+) :", t) for t in texts]
        if any(h is None for h in heads):
            raise ValueError("a text does not start with a TinyReviews instruction")
        return [h.groups() for h in heads], [t[h.end():] for t, h in zip(texts, heads)]

    (asked, responses), vec = split(train_texts), CountVectorizer(token_pattern=r"[^ ]+", ngram_range=(1, 2))
    vec.fit(responses)
    sentiments = sorted({s for s, _ in asked})

    def features(texts):
        asked, responses = split(texts)
        words = vec.transform(responses)
        blocks = [sparse.diags(np.array([s == want for s, _ in asked], float)) @ words for want in sentiments]
        named = np.array([[f" {a} " in f" {y} "] for (_, a), y in zip(asked, responses)], float)
        return sparse.hstack(blocks + [sparse.csr_matrix(named)]).tocsr()

    x = features(train_texts)
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(
        sparse.vstack([x, x]), np.r_[np.ones(len(train_gold)), np.zeros(len(train_gold))],
        sample_weight=np.r_[train_gold, 1 - train_gold] + 1e-6)
    return clf.predict_proba(features(eval_texts))[:, 1]


def _r2(pred, true) -> float:
    return float(1 - np.mean((np.asarray(pred) - true) ** 2) / np.var(true))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the noise-free gold regressions")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = reward.RewardModelConfig()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    train, ev = reward.recipe_data(cfg)
    lam = cfg.annotators.length_bias
    gc, gr, lc, lr = (np.asarray(ev[c], np.float64) for c in ("gold_chosen", "gold_rejected", "len_chosen",
                                                             "len_rejected"))
    out = {"ceiling": reward.bayes_ceiling(ev["p_chosen"]), "n_eval_pairs": len(gc), "n_train_pairs": len(train),
           "accuracy": {"annotators' utility (gold + lambda len)":
                        reward.pairwise_accuracy(gc + lam * lc, gr + lam * lr),
                        "gold only": reward.pairwise_accuracy(gc, gr),
                        "length only": reward.pairwise_accuracy(lc, lr)},
           "mean_abs_gold_diff": float(np.abs(gc - gr).mean()),
           "mean_abs_lambda_len_diff": float(lam * np.abs(lc - lr).mean())}
    # a linear Bradley-Terry probe on the frozen SFT model: r = w . h(x, y)
    rm, tok = reward.reward_model_from_lm(seed=cfg.seed, device="cpu")
    fc, fr = (_last_hidden(rm, tok, [x + y for x, y in zip(train["prompt"], train[c])]) for c in ("chosen", "rejected"))
    probe = LogisticRegression(C=0.1, fit_intercept=False, max_iter=2000).fit(
        np.concatenate([fc - fr, fr - fc]), np.r_[np.ones(len(fc)), np.zeros(len(fc))])
    ec, er = (_last_hidden(rm, tok, [x + y for x, y in zip(ev["prompt"], ev[c])]) for c in ("chosen", "rejected"))
    out["accuracy"]["frozen SFT features, linear Bradley-Terry probe"] = reward.pairwise_accuracy(
        ec @ probe.coef_[0], er @ probe.coef_[0])
    # the reward-model architecture regressed on noise-free gold, half and all of the training responses
    texts, gold = _distinct(train)
    out["gold_regression"] = []
    for frac in (0.5, 1.0):
        n = int(len(texts) * frac)
        model, mtok = _regress_gold(texts[:n], gold[:n], args.epochs, seed=cfg.seed)
        sc = reward.score(model, mtok, ev["prompt"], [c[1:-len(mtok.eos_token) - 1] for c in ev["chosen"]]).numpy()
        sr = reward.score(model, mtok, ev["prompt"], [r[1:-len(mtok.eos_token) - 1] for r in ev["rejected"]]).numpy()
        pred, true = np.r_[sc, sr], np.r_[gc, gr]
        seen = np.random.default_rng(cfg.seed).choice(n, min(n, 2000), replace=False)
        with torch.no_grad():
            batches = [mtok([texts[j] for j in seen[i:i + 256]], padding=True, return_tensors="pt")
                       for i in range(0, len(seen), 256)]
            fit_pred = np.concatenate([model(**enc).logits[:, 0].numpy() for enc in batches])
        out["gold_regression"].append({
            "n_responses": n, "epochs": args.epochs, "pearson": float(stats.pearsonr(pred, true)[0]),
            "r2": _r2(pred, true), "r2_on_training_responses": _r2(fit_pred, gold[seen]),
            "accuracy_g_hat_plus_lambda_len": reward.pairwise_accuracy(sc + lam * lc, sr + lam * lr)})
        print(out["gold_regression"][-1], flush=True)
    g_hat = (sc, sr)  # the regression on all training responses

    # another model family on the same noise-free gold
    bow = _bag_of_words_gold(texts, gold, [x + c for x, c in zip(ev["prompt"], ev["chosen"])]
                             + [x + r for x, r in zip(ev["prompt"], ev["rejected"])])
    bc, br = bow[:len(gc)], bow[len(gc):]
    out["bag_of_words_gold"] = {
        "r2": _r2(np.r_[bc, br], np.r_[gc, gr]),
        "accuracy_g_hat_plus_lambda_len": reward.pairwise_accuracy(bc + lam * lc, br + lam * lr)}
    print(out["bag_of_words_gold"], flush=True)

    # is the gap an artefact of the annotators' settings? two fixed orderings under other annotators
    shipped, shipped_tok = zoo.load("tiny-reviews-rm", device="cpu")
    rc, rr = (reward.score(shipped, shipped_tok, ev["prompt"], [y[1:-len(tok.eos_token) - 1] for y in ev[c]]).numpy()
              for c in ("chosen", "rejected"))
    out["annotator_grid"] = []
    for beta in (3.0, 5.0, 10.0, 20.0):
        for noise in (0.0, 0.1, 0.2):
            for length_bias in (0.0, 0.01, 0.02, 0.04):
                a = reward.Annotators(beta=beta, noise=noise, length_bias=length_bias)
                q = a.prob_prefer(a.utility(gc, lc), a.utility(gr, lr))
                out["annotator_grid"].append({
                    "beta": beta, "noise": noise, "length_bias": length_bias, "ceiling": reward.bayes_ceiling(q),
                    "shipped_rm": _expected_accuracy(rc, rr, q),
                    "g_hat_plus_lambda_len": _expected_accuracy(g_hat[0] + length_bias * lc,
                                                                g_hat[1] + length_bias * lr, q)})
    out.update(seconds=round(time.perf_counter() - t0, 1),
               machine={"platform": platform.platform(), "load_average": os.getloadavg()})
    path = ROOT / "benchmarks" / "results" / "reward_learnability.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
