"""Outcome against process supervision in best-of-n (chapter 6, after Lightman et al., 2023).

    .venv/bin/python benchmarks/reward_process.py [--train-prompts 125 1000 --model-seeds 0 1 --steps 1000]

The same responses of the SFT policy (``k`` per training instruction, fresh seeds) train two
step models from the SFT LM with the same loop and budget (``rl4lmt.reward.train_step_model``),
for each training-set size and model seed:

- **process**: the world's exact posterior after every prefix as the label of every step;
- **outcome**: the final gold utility as the label of the last step only (Lightman et al.'s
  outcome-supervised baseline: same responses, one label each).

As in the shipped recipe, a share of the training responses (``--off-task``) is re-paired with
another instruction (``reward.off_task_instructions``), so that both models must read the request;
each run also reports its final-step error on the held-out samples re-paired the same way.

Both, and the shipped Bradley-Terry reward model ``tiny-reviews-rm`` (trained on noisy,
length-biased preferences), then pick the best of n of the policy's responses to held-out
instructions; the gold utility of the pick is averaged over every n-subset of N samples
(``reward.best_of_n_expectation``). Also the step models' per-step error against the exact
per-prefix posterior. The largest size with the first model seed is the "main" run (every
selector, an example response). Writes benchmarks/results/reward_process.json (with the
checkpoints' sha256), which the chapter plots. About 2.5 CPU-minutes per step model on one thread
(8 by default), plus sampling.
"""
import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rl4lmt import reward, zoo
from rl4lmt.world import TinyReviews

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "reward_process.json"


def _weights_sha(name: str) -> str:
    """First 12 hex digits of a shipped checkpoint's weights: which models these results belong to."""
    return hashlib.sha256((zoo.checkpoint_dir(name) / "model.safetensors").read_bytes()).hexdigest()[:12]


def _step_metrics(pred, gold) -> dict:
    """Per-step agreement of predicted and exact posteriors (all steps of all responses pooled)."""
    p, v = np.concatenate(pred), np.concatenate(gold)
    return {"mae": float(np.abs(p - v).mean()), "pearson": float(np.corrcoef(p, v)[0, 1]),
            "accuracy": float(((p > 0.5) == (v > 0.5)).mean()), "n_steps": int(len(v))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-prompts", type=int, nargs="+", default=[125, 1000],
                    help="training set sizes (instructions; the first n of one sampled set)")
    ap.add_argument("--k", type=int, default=2, help="training responses per instruction")
    ap.add_argument("--off-task", type=float, default=reward.ProcessRewardModelConfig().off_task,
                    help="share of training responses re-paired with another instruction (as the shipped recipe)")
    ap.add_argument("--steps", type=int, default=reward.ProcessRewardModelConfig().steps,
                    help="optimiser steps of each step model (as the shipped recipe)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--n", type=int, default=16, help="samples per held-out instruction (largest best-of-n)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the data (instructions, samples)")
    ap.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1],
                    help="seeds of the step models (head initialisation and batch order)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    world = TinyReviews(seed=args.seed)
    policy, tok = zoo.load(reward.POLICY, device="cpu")
    gen = torch.Generator().manual_seed(args.seed)

    # training responses: fresh instructions (seeds apart from the reward model's recipe)
    train_x = [x for x, _ in world.instructions(max(args.train_prompts), seed=args.seed + 20_000)]
    train_y = reward.sample_responses(policy, tok, train_x, args.k, generator=gen)
    xs = [x for x, ys in zip(train_x, train_y) for _ in ys]
    ys = [y for yy in train_y for y in yy]
    xs = reward.off_task_instructions(xs, args.off_task, args.seed)  # as train_prm: some answer another request
    train_gold = np.mean([reward.gold_utility(world, x, y) for x, y in zip(xs, ys)])
    print(f"{len(ys)} training responses ({args.off_task:.0%} re-paired), mean gold {train_gold:.3f}", flush=True)

    # held-out instructions, N samples each, scored by every selector
    eval_x = [x for x, _ in world.instructions(args.eval_prompts, seed=args.seed + 30_000)]
    eval_y = reward.sample_responses(policy, tok, eval_x, args.n, generator=gen)
    ex = [x for x, yy in zip(eval_x, eval_y) for _ in yy]
    ey = [y for yy in eval_y for y in yy]
    shape = (args.eval_prompts, args.n)
    gold = np.array([reward.gold_utility(world, x, y) for x, y in zip(ex, ey)]).reshape(shape)
    exact = [reward.process_labels(world, x, y)[1:] for x, y in zip(ex, ey)]  # the T + 1 response steps
    off_x = reward.off_task_instructions(ex, 1.0, args.seed)  # the same samples answering other requests
    off_gold = np.array([reward.gold_utility(world, x, y) for x, y in zip(off_x, ey)])
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.n]

    def curve(s):
        rows = [reward.best_of_n_expectation(np.asarray(s).reshape(shape), gold, n) for n in ns]  # (M,) each
        return {"gold": [float(r.mean()) for r in rows], "se": [float(r.std(ddof=1) / np.sqrt(len(r))) for r in rows]}

    def fit(train_xs, train_ys, model_seed, outcome_only=False):
        """One step model from the SFT LM on these responses, with the run's loop and budget."""
        batch = reward.step_label_batch(tok, world, train_xs, train_ys, outcome_only=outcome_only)
        model, _ = reward.step_model_from_lm(reward.POLICY, seed=model_seed, device="cpu")
        losses = reward.train_step_model(model, batch, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                         seed=model_seed, progress=False)
        return model, losses

    def off_task_final(model):
        """Final-step agreement with gold on the held-out samples re-paired with other requests."""
        return _step_metrics([p[-1:] for p in reward.step_scores(model, tok, off_x, ey)], [[g] for g in off_gold])

    runs, main_steps = [], {}
    for n_prompts in sorted(args.train_prompts):
        m = n_prompts * args.k  # the first n_prompts instructions' responses
        for model_seed in args.model_seeds:
            for kind in ("process", "outcome"):
                t = time.perf_counter()
                model, losses = fit(xs[:m], ys[:m], model_seed, outcome_only=kind == "outcome")
                pred = reward.step_scores(model, tok, ex, ey)
                run = {"kind": kind, "n_prompts": n_prompts, "n_responses": m, "model_seed": model_seed,
                       "loss_start": float(np.mean(losses[:20])), "loss_end": float(np.mean(losses[-20:])),
                       "seconds": round(time.perf_counter() - t, 1),
                       "best_of_n": {agg: curve(reward.aggregate_steps(pred, agg))
                                     for agg in ("last", "min", "product")},
                       "per_step": _step_metrics(pred, exact),
                       "final_step": _step_metrics([p[-1:] for p in pred], [v[-1:] for v in exact]),
                       "off_task_final_step": off_task_final(model)}
                runs.append(run)
                print(f"{kind:8s} {m:5d} responses seed {model_seed}: best-of-n (last) "
                      + " ".join(f"{g:.3f}" for g in run["best_of_n"]["last"]["gold"])
                      + f"  per-step MAE {run['per_step']['mae']:.3f}  ({run['seconds']} s)", flush=True)
                if n_prompts == max(args.train_prompts) and model_seed == args.model_seeds[0]:
                    main_steps[kind] = pred
                    if kind == "process":  # the shipped recipe's data and seeds: the same weights?
                        shipped = zoo.load("tiny-reviews-prm", device="cpu")[0].state_dict()
                        same_as_shipped = all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    # ablation: the main process model trained on on-task responses only (no re-paired requests)
    t = time.perf_counter()
    model, _ = fit([x for x, yy in zip(train_x, train_y) for _ in yy], ys, args.model_seeds[0])
    on_task_only = {"n_responses": len(ys), "per_step": _step_metrics(reward.step_scores(model, tok, ex, ey), exact),
                    "off_task_final_step": off_task_final(model), "seconds": round(time.perf_counter() - t, 1)}
    print(f"process, on-task responses only: off-task final MAE {on_task_only['off_task_final_step']['mae']:.3f}",
          flush=True)
    rm, rm_tok = zoo.load("tiny-reviews-rm", device="cpu")
    steps = main_steps
    selectors = {
        "outcome RM (Bradley-Terry, tiny-reviews-rm)": reward.score(rm, rm_tok, ex, ey).double().numpy(),
        "outcome-supervised (last step)": reward.aggregate_steps(steps["outcome"], "last"),
        "process-supervised (last step)": reward.aggregate_steps(steps["process"], "last"),
        "process-supervised (min)": reward.aggregate_steps(steps["process"], "min"),
        "process-supervised (product)": reward.aggregate_steps(steps["process"], "product"),
        "gold (the ideal)": gold.reshape(-1) + 1e-9 * np.random.default_rng(args.seed).random(gold.size),
    }
    curves = {}
    for name, s in selectors.items():
        curves[name] = curve(s)
        print(f"{name:46s} " + " ".join(f"{g:.3f}" for g in curves[name]["gold"]), flush=True)
    per_step = {kind: _step_metrics(steps[kind], exact) for kind in steps}
    per_step["process (final step only)"] = _step_metrics([p[-1:] for p in steps["process"]], [v[-1:] for v in exact])
    per_step["outcome (final step only)"] = _step_metrics([p[-1:] for p in steps["outcome"]], [v[-1:] for v in exact])
    # one response for the page: where the gold posterior moves, and what each model says there
    moves = [float(np.ptp(v)) + (0.5 if 0.2 < v[-1] < 0.8 else 0.0) for v in exact]
    i = int(np.argmax(moves))
    example = {"instruction": ex[i], "response": ey[i], "gold_steps": exact[i].tolist(),
               "process_steps": steps["process"][i].tolist(), "outcome_steps": steps["outcome"][i].tolist()}
    out = {
        "meta": {"command": "python benchmarks/reward_process.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "policy": reward.POLICY,
                 "weights_sha256": {n: _weights_sha(n) for n in (reward.POLICY, "tiny-reviews-rm", "tiny-reviews-prm")},
                 "main_process_model_is_shipped_prm": same_as_shipped,
                 "train_prompts": args.train_prompts, "k": args.k, "off_task": args.off_task,
                 "model_seeds": args.model_seeds,
                 "train_responses": len(ys), "train_gold": float(train_gold),
                 "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                 "eval_prompts": args.eval_prompts, "n": args.n, "seed": args.seed,
                 "seconds": round(time.perf_counter() - t0, 1), "threads": 1, "machine": platform.machine(),
                 "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "ns": ns, "kl": [reward.best_of_n_kl(n) for n in ns], "best_of_n": curves, "per_step": per_step,
        "example": example, "runs": runs, "on_task_only": on_task_only,
        "off_task_gold_mean": float(off_gold.mean()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} in {out['meta']['seconds']} s")


if __name__ == "__main__":
    main()
