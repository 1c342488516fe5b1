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
  training on noisy pairs of the same responses can learn about gold.

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

from rl4lmt import reward

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
        out["gold_regression"].append({
            "n_responses": n, "epochs": args.epochs, "pearson": float(stats.pearsonr(pred, true)[0]),
            "r2": float(1 - np.mean((pred - true) ** 2) / np.var(true)),
            "accuracy_g_hat_plus_lambda_len": reward.pairwise_accuracy(sc + lam * lc, sr + lam * lr)})
        print(out["gold_regression"][-1], flush=True)
    out.update(seconds=round(time.perf_counter() - t0, 1),
               machine={"platform": platform.platform(), "load_average": os.getloadavg()})
    path = ROOT / "benchmarks" / "results" / "reward_learnability.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
