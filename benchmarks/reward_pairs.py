"""Reward-model accuracy against the number of preference pairs (chapter 6's data-size curve).

    .venv/bin/python benchmarks/reward_pairs.py [--sizes 250 500 1000 2000]

The shipped recipe's data (``rl4lmt.reward.recipe_data``: the SFT policy's responses, the
annotators' rankings, held-out pairs from another seed), then the same ``RewardTrainer`` recipe
(``rl4lmt.reward.fit``) on the pairs of the first n prompts for each size (a prompt's C(k, 2)
pairs stay together), each evaluated on the held-out pairs; the full size is the shipped model
itself (the recipe is deterministic). Writes
benchmarks/results/reward_pairs.json; the chapter plots it (training takes minutes).
"""
import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rl4lmt import reward, zoo

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000],
                    help="numbers of training prompts (each gives up to C(k, 2) pairs)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = reward.RewardModelConfig()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    train_data, eval_data = reward.recipe_data(cfg)
    ceiling = reward.bayes_ceiling(eval_data["p_chosen"])
    runs = []
    for n in sorted(args.sizes):
        if n > cfg.n_prompts:
            raise SystemExit(f"--sizes: {n} is more than the recipe's {cfg.n_prompts} prompts")
        subset = train_data.select([i for i, pid in enumerate(train_data["prompt_id"]) if pid < n])
        t = time.perf_counter()
        if n == cfg.n_prompts:
            # the whole recipe IS the shipped model (same data, same seeded fit: bit-identical)
            rm, tok = zoo.load("tiny-reviews-rm", device="cpu")
            train_loss = json.loads((zoo.checkpoint_dir("tiny-reviews-rm") / "training.json").read_text())["train_loss"]
        else:
            # the recipe's epochs at every size (not the same number of steps): what "more data" means in practice
            rm, tok, log = reward.fit(subset, cfg, progress=False)
            train_loss = log["train_loss"]
        ev = reward.evaluate(rm, tok, eval_data)
        runs.append({"n_prompts": n, "n_pairs": len(subset), "seconds": round(time.perf_counter() - t, 1),
                     "train_loss": train_loss, **{k: ev[k] for k in ("accuracy", "gold_accuracy", "pearson")}})
        print(runs[-1], flush=True)
    out = {"config": {k: v for k, v in asdict(cfg).items() if k != "annotators"}, "ceiling": ceiling,
           "n_eval_pairs": len(eval_data), "runs": runs, "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"platform": platform.platform(), "load_average": os.getloadavg()}}
    path = ROOT / "benchmarks" / "results" / "reward_pairs.json"
    path.write_text(json.dumps(out, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
