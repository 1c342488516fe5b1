"""RLHF on the TinyReviews instruction task: rl4lmt's PPO beside TRL's RLOO, GRPO and DPO, and best-of-n.

Every method starts from the same policy (``rl4lmt.ppo.POLICY``), is rewarded by the same reward
model (``rl4lmt.ppo.REWARD_MODEL``, the *proxy*), and is judged on the same held-out instructions by
the world's *gold* score (``TinyReviews.instruction_score``), against its KL to the starting
policy (sampled, sum over the response of log pi - log pi_ref). Two experiments:

1. over-optimisation: PPO for several KL coefficients, evaluated every few iterations
   (proxy, gold, length, distinct-2 against KL);
2. the frontier at equal wall-clock: PPO, TRL ``RLOOTrainer`` and ``GRPOTrainer`` (reward function
   = the reward model), each for ``--seconds`` of training on the same 2-core machine, evaluated
   along the way; TRL ``DPOTrainer`` on the annotators' preference pairs over the policy's own
   responses (``rl4lmt.reward.preference_data``); best-of-n (KL = log n - (n - 1)/n).

The ratio reported: rl4lmt PPO's best gold reward within the KL reached by the best TRL trainer,
divided by that trainer's gold at its own KL (gold at matched KL, equal time), and PPO's time split
(sampling, scoring, update).

    python benchmarks/rlhf_frontier.py                 # ~25 min on 2 busy cores
    python benchmarks/rlhf_frontier.py --seconds 60 --quick   # a smoke run

Results: ``benchmarks/results/rlhf_frontier.json`` (read by book/ch07-ppo-rlhf.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rl4lmt import ppo  # noqa: E402
from rl4lmt.decoding import distinct_n  # noqa: E402
from rl4lmt.lm import shifted_logprobs  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "rlhf_frontier.json"
MAX_NEW_TOKENS = 30
MISSING_EOS_PENALTY = -3.0  # in normalised-score units: an unfinished response is not a review


@torch.no_grad()
def evaluate(policy, task, *, samples: int = 2, seed: int = 0) -> dict:
    """Sample ``samples`` responses per held-out instruction; proxy, gold, KL, length, diversity."""
    was_training = policy.training
    policy.eval()
    prompts = [p for p in task.eval_prompts for _ in range(samples)]
    roll = ppo.rollout(policy, task.tokenizer, prompts, MAX_NEW_TOKENS, generator=torch.Generator().manual_seed(seed))
    batch = {"input_ids": roll.input_ids, "attention_mask": roll.attention_mask}
    lp = shifted_logprobs(policy(**batch).logits, roll.input_ids)
    ref = shifted_logprobs(task.ref(**batch).logits, roll.input_ids)
    kl = ((lp - ref) * roll.response_mask).sum(-1)
    long_enough = [r for r in roll.responses if len(r.split()) >= 2]
    if was_training:
        policy.train()
    return {
        "proxy": float(np.mean(task.reward_fn(roll.prompts, roll.responses))),
        "gold": float(np.mean(task.gold_fn(roll.prompts, roll.responses))),
        "kl": float(kl.mean()),
        "kl_se": float(kl.std() / math.sqrt(len(kl))),
        "length": float(roll.response_mask.sum(-1).mean()),
        "eos_rate": float(roll.finished.float().mean()),
        "distinct2": distinct_n(long_enough, 2) if long_enough else float("nan"),
    }


def fresh_task(args):
    return ppo.load_task(n_prompts=args.prompts, n_eval=args.eval_prompts, device="cpu", seed=0)


# ----------------------------------------------------------------------------------------------
# rl4lmt PPO
# ----------------------------------------------------------------------------------------------
def run_ppo(args, kl_coef: float, seconds: float, eval_every: int, label: str) -> dict:
    task = fresh_task(args)
    cfg = ppo.PPOConfig(iterations=10_000, batch_size=args.batch_size, minibatch_size=args.batch_size // 2,
                        ppo_epochs=2, max_new_tokens=MAX_NEW_TOKENS, kl_coef=kl_coef, lr=args.lr,
                        missing_eos_penalty=MISSING_EOS_PENALTY, seed=0)
    curve = [{"time": 0.0, "step": 0, **evaluate(task.policy, task)}]
    train_time = [0.0]
    last = [time.perf_counter()]

    def callback(i, stats):
        now = time.perf_counter()
        train_time[0] += now - last[0]
        if (i + 1) % eval_every == 0:
            curve.append({"time": train_time[0], "step": i + 1, **evaluate(task.policy, task, seed=i + 1)})
            print(f"  {label} it {i + 1} t={train_time[0]:.0f}s gold={curve[-1]['gold']:.3f} "
                  f"proxy={curve[-1]['proxy']:.3f} kl={curve[-1]['kl']:.2f}", flush=True)
        last[0] = time.perf_counter()  # evaluation time is not training time
        return train_time[0] >= seconds

    hist = ppo.train_ppo(task.policy, task.ref, task.tokenizer, task.reward_fn, task.prompts, cfg,
                         critic=ppo.Critic(task.reward_model), callback=callback, progress=False)
    timing = {k: float(np.sum([h[k] for h in hist])) for k in ("time/rollout", "time/score", "time/update")}
    return {"method": "PPO (rl4lmt)", "kl_coef": kl_coef, "iterations": len(hist), "seconds": train_time[0],
            "time_split": timing, "curve": curve}


# ----------------------------------------------------------------------------------------------
# TRL RLOO and GRPO (reward function = the reward model)
# ----------------------------------------------------------------------------------------------
def _budget_callback(task, curve: list[dict], label: str, seconds: float, eval_every: int):
    """A TRL/transformers callback: counts training time only (evaluation excluded), appends an
    evaluation to ``curve`` every ``eval_every`` steps and stops training after ``seconds``."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        train_seconds, _last = 0.0, None

        def on_step_begin(self, a, s, control, **kw):
            self._last = time.perf_counter()

        def on_step_end(self, a, s, control, **kw):
            self.train_seconds += time.perf_counter() - self._last
            if s.global_step % eval_every == 0:
                curve.append({"time": self.train_seconds, "step": s.global_step,
                              **evaluate(task.policy, task, seed=s.global_step)})
                print(f"  {label} step {s.global_step} t={self.train_seconds:.0f}s gold={curve[-1]['gold']:.3f} "
                      f"proxy={curve[-1]['proxy']:.3f} kl={curve[-1]['kl']:.2f}", flush=True)
            if self.train_seconds >= seconds:
                control.should_training_stop = True
            return control

    return Budget()


def run_trl_online(args, kind: str, kl_coef: float, seconds: float, eval_every: int) -> dict:
    from datasets import Dataset

    if kind == "RLOO":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

    task = fresh_task(args)
    tok = task.tokenizer

    def reward_model(prompts, completions, **kwargs):  # TRL's reward-function signature
        return task.reward_fn(list(prompts), [c.strip() for c in completions])

    curve = [{"time": 0.0, "step": 0, **evaluate(task.policy, task)}]
    budget = _budget_callback(task, curve, kind, seconds, eval_every)

    n_gen = 4
    with tempfile.TemporaryDirectory() as out:
        config = Config(
            output_dir=out, report_to=[], use_cpu=True, save_strategy="no", logging_steps=10_000, disable_tqdm=True,
            per_device_train_batch_size=args.batch_size, num_generations=n_gen,  # batch_size/4 prompts x 4
            max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
            learning_rate=args.lr, beta=kl_coef, max_steps=100_000, seed=0, disable_dropout=True,
            lr_scheduler_type="constant",
        )
        trainer = Trainer(model=task.policy, reward_funcs=reward_model, args=config,
                          train_dataset=Dataset.from_dict({"prompt": task.prompts}),
                          processing_class=tok, callbacks=[budget])
        trainer.train()
    return {"method": f"{kind} (TRL)", "kl_coef": kl_coef, "iterations": int(curve[-1]["step"]),
            "seconds": budget.train_seconds, "curve": curve}


# ----------------------------------------------------------------------------------------------
# TRL DPO on the annotators' preferences, best-of-n
# ----------------------------------------------------------------------------------------------
def run_dpo(args, beta: float, seconds: float, eval_every: int) -> dict:
    from trl import DPOConfig, DPOTrainer

    from rl4lmt import reward
    from rl4lmt.world import TinyReviews

    task = fresh_task(args)
    t0 = time.perf_counter()
    data = reward.preference_data(task.ref, task.tokenizer, TinyReviews(), args.dpo_prompts, k=4, seed=1)
    data_seconds = time.perf_counter() - t0
    data = data.select_columns(["prompt", "chosen", "rejected"])
    curve = [{"time": 0.0, "step": 0, **evaluate(task.policy, task)}]
    budget = _budget_callback(task, curve, "DPO", seconds, eval_every)

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(output_dir=out, report_to=[], use_cpu=True, save_strategy="no", logging_steps=10_000,
                           disable_tqdm=True, per_device_train_batch_size=32, learning_rate=args.lr, beta=beta,
                           num_train_epochs=100,
                           max_length=None, seed=0, lr_scheduler_type="constant")
        trainer = DPOTrainer(model=task.policy, ref_model=copy.deepcopy(task.ref), args=config, train_dataset=data,
                             processing_class=task.tokenizer, callbacks=[budget])
        trainer.train()
    return {"method": "DPO (TRL)", "kl_coef": beta, "pairs": len(data), "data_seconds": data_seconds,
            "seconds": budget.train_seconds, "curve": curve}


@torch.no_grad()
def run_best_of_n(args, ns=(1, 2, 4, 8, 16)) -> dict:
    from rl4lmt.reward import best_of_n_expectation, best_of_n_kl

    task = fresh_task(args)
    n_max = max(ns)
    prompts = [p for p in task.eval_prompts for _ in range(n_max)]
    roll = ppo.rollout(task.ref, task.tokenizer, prompts, MAX_NEW_TOKENS, generator=torch.Generator().manual_seed(0))
    proxy = np.array(task.reward_fn(roll.prompts, roll.responses)).reshape(-1, n_max)
    gold = np.array(task.gold_fn(roll.prompts, roll.responses)).reshape(-1, n_max)
    length = roll.response_mask.sum(-1).numpy().reshape(-1, n_max)
    points = []
    for n in ns:
        # the reward model picks, the world judges; averaged over every n-subset of a prompt's n_max
        # samples (Gao et al.'s unbiased estimator): n = 1 is then the mean of all samples, not of
        # one column (a 48-sample mean has a standard error of ~0.04, as big as the effects)
        points.append({"n": n, "kl": best_of_n_kl(n),
                       **{k: float(best_of_n_expectation(proxy, v, n).mean())
                          for k, v in (("proxy", proxy), ("gold", gold), ("length", length))}})
    return {"method": "best-of-n", "curve": points}


# ----------------------------------------------------------------------------------------------
def _gold_at_kl(curve: list[dict], kl: float) -> float:
    """Gold reward where a run's curve (in training order) first reaches ``kl``, linearly interpolated."""
    for a, b in zip(curve, curve[1:]):
        if a["kl"] <= kl <= b["kl"] and b["kl"] > a["kl"]:
            w = (kl - a["kl"]) / (b["kl"] - a["kl"])
            return (1 - w) * a["gold"] + w * b["gold"]
    return curve[-1]["gold"] if kl >= curve[-1]["kl"] else curve[0]["gold"]


def matched_kl_ratio(ppo_run: dict, others: list[dict]) -> dict:
    """rl4lmt PPO against the best TRL run (highest gold reached), at equal time.

    - ``ratio``: PPO's gold where its curve reaches the KL of the TRL run's best point
      (interpolated between evaluations), over that best gold: gold at matched KL;
    - ``ratio_best``: PPO's best gold over the TRL run's best gold (the top of each frontier).
    """
    best = max(others, key=lambda r: max(p["gold"] for p in r["curve"]))
    point = max(best["curve"], key=lambda p: p["gold"])
    ours_at_kl = _gold_at_kl(ppo_run["curve"], point["kl"])
    ours_best = max(ppo_run["curve"], key=lambda p: p["gold"])
    return {"against": best["method"], "kl_coef": ppo_run["kl_coef"], "their_gold": point["gold"],
            "their_kl": point["kl"], "ppo_gold_at_their_kl": ours_at_kl, "ratio": ours_at_kl / point["gold"],
            "ppo_best_gold": ours_best["gold"], "ppo_best_kl": ours_best["kl"],
            "ratio_best": ours_best["gold"] / point["gold"]}


def _weights_sha(name: str) -> str:
    """First 12 hex digits of a shipped checkpoint's weights: which models these results belong to."""
    import hashlib

    from rl4lmt.zoo import checkpoint_dir

    return hashlib.sha256((checkpoint_dir(name) / "model.safetensors").read_bytes()).hexdigest()[:12]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=240.0, help="training wall-clock per online run")
    p.add_argument("--sweep", type=float, nargs="+", default=[0.0, 0.02, 0.1], help="PPO KL coefficients")
    p.add_argument("--kl-coef", type=float, default=0.02, help="KL coefficient of the frontier runs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--eval-prompts", type=int, default=48)
    p.add_argument("--dpo-prompts", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--only", nargs="+", default=["sweep", "rloo", "grpo", "dpo", "bon"],
                   help="parts to (re)run; 'summary' recomputes the ratio from the saved results")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = {"sweep", "rloo", "grpo", "dpo", "bon"} & set(args.only)  # --only summary: recompute the ratio only
    results["meta"] = results.get("meta", {}) if not runs else {
        "command": "python benchmarks/rlhf_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "policy": ppo.POLICY, "reward_model": ppo.REWARD_MODEL, "seconds": args.seconds, "kl_coef": args.kl_coef,
        "weights_sha256": {name: _weights_sha(name) for name in (ppo.POLICY, ppo.REWARD_MODEL)},
        "batch_size": args.batch_size, "lr": args.lr, "max_new_tokens": MAX_NEW_TOKENS,
        "eval_prompts": args.eval_prompts, "threads": 1, "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    if "sweep" in args.only:
        results["sweep"] = []
        for beta in args.sweep:
            print(f"PPO beta={beta}", flush=True)
            results["sweep"].append(run_ppo(args, beta, args.seconds, args.eval_every, f"PPO b={beta}"))
            save()
    for kind in ("rloo", "grpo"):
        if kind in args.only:
            print(kind.upper(), flush=True)
            results[kind] = run_trl_online(args, kind.upper(), args.kl_coef, args.seconds, args.eval_every)
            save()
    if "dpo" in args.only:
        print("DPO", flush=True)
        results["dpo"] = run_dpo(args, 0.1, args.seconds / 2, args.eval_every * 4)
        save()
    if "bon" in args.only:
        print("best-of-n", flush=True)
        results["bon"] = run_best_of_n(args)
        save()
    frontier_ppo = next((r for r in results.get("sweep", []) if r["kl_coef"] == args.kl_coef), None)
    others = [results[k] for k in ("rloo", "grpo") if k in results]
    if frontier_ppo and others:
        results["ratio"] = matched_kl_ratio(frontier_ppo, others)
        print("ratio", results["ratio"], flush=True)
    save()


if __name__ == "__main__":
    main()
