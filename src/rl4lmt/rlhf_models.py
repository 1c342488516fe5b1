"""Recipes of the shipped RLHF checkpoints ``tiny-reviews-ppo`` and ``tiny-reviews-dpo`` (chapter 8).

Both start from chapter 5's SFT policy (:data:`rl4lmt.ppo.POLICY`) and are trained for a fixed,
seeded number of steps on one thread, so one command rebuilds the same weights bit for bit:

- ``tiny-reviews-ppo``: :func:`rl4lmt.ppo.train_ppo` on the reward model
  (:data:`rl4lmt.ppo.REWARD_MODEL`, the proxy), KL coefficient β = 0.05, critic started from the
  reward model, settings as in ``benchmarks/rlhf_frontier.py``;
- ``tiny-reviews-dpo``: TRL ``DPOTrainer`` (β = 0.1) on the annotators' preference pairs over the
  SFT policy's own responses (:func:`rl4lmt.reward.preference_data`), as the benchmark runs it.

Each writes ``training.json`` with the recipe and what it reached on held-out instructions:
proxy (reward-model score), gold (``TinyReviews.instruction_score``) and the sampled KL to the
SFT policy.

    python -m rl4lmt.rlhf_models ppo            # or: make rlhf-models (both)
    python -m rl4lmt.rlhf_models dpo --out /tmp/dpo
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rl4lmt import ppo
from rl4lmt.utils import set_seed

__all__ = ["PPORecipe", "DPORecipe", "train_ppo_model", "train_dpo_model", "evaluate"]

MAX_NEW_TOKENS = 30


@dataclass
class PPORecipe:
    """``tiny-reviews-ppo``: rl4lmt's PPO, fixed number of iterations (benchmark settings)."""

    iterations: int = 14         # gold still rising at this KL (~4 nats); 20 over-optimises (gold falls)
    batch_size: int = 16
    kl_coef: float = 0.05
    lr: float = 2e-4
    ppo_epochs: int = 2
    missing_eos_penalty: float = -3.0
    n_prompts: int = 256
    seed: int = 0
    threads: int = 1


@dataclass
class DPORecipe:
    """``tiny-reviews-dpo``: TRL ``DPOTrainer`` on preference pairs, fixed number of steps."""

    steps: int = 40
    batch_size: int = 32
    beta: float = 0.1
    lr: float = 2e-4
    n_prompts: int = 150   # instructions with k = 4 ranked responses each -> up to 6 pairs each
    k: int = 4
    data_seed: int = 1
    seed: int = 0
    threads: int = 1


@torch.no_grad()
def evaluate(policy, task, *, samples: int = 2, seed: int = 0) -> dict:
    """Proxy, gold and sampled KL to the reference on the held-out instructions (``samples`` each)."""
    from rl4lmt.lm import shifted_logprobs

    policy.eval()
    prompts = [p for p in task.eval_prompts for _ in range(samples)]
    roll = ppo.rollout(policy, task.tokenizer, prompts, MAX_NEW_TOKENS, generator=torch.Generator().manual_seed(seed))
    batch = {"input_ids": roll.input_ids, "attention_mask": roll.attention_mask}
    kl = ((shifted_logprobs(policy(**batch).logits, roll.input_ids)
           - shifted_logprobs(task.ref(**batch).logits, roll.input_ids)) * roll.response_mask).sum(-1)
    return {
        "proxy": float(np.mean(task.reward_fn(roll.prompts, roll.responses))),
        "gold": float(np.mean(task.gold_fn(roll.prompts, roll.responses))),
        "kl": float(kl.mean()), "kl_se": float(kl.std() / math.sqrt(len(kl))),
        "length": float(roll.response_mask.sum(-1).mean()),
        "eos_rate": float(roll.finished.float().mean()),
    }


def _save(policy, tokenizer, out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.config.use_cache = True  # TRL switches the KV cache off for training; the SFT checkpoint has it on
    policy.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps(report, indent=1))


def train_ppo_model(out_dir, recipe: PPORecipe | None = None, progress: bool = True) -> dict:
    """Train ``tiny-reviews-ppo`` into ``out_dir``; return the report written as ``training.json``."""
    r = recipe or PPORecipe()
    torch.set_num_threads(r.threads)
    set_seed(r.seed)
    task = ppo.load_task(n_prompts=r.n_prompts, n_eval=48, device="cpu", seed=0)
    before = evaluate(task.policy, task)
    cfg = ppo.PPOConfig(iterations=r.iterations, batch_size=r.batch_size, minibatch_size=r.batch_size // 2,
                        ppo_epochs=r.ppo_epochs, max_new_tokens=MAX_NEW_TOKENS, kl_coef=r.kl_coef, lr=r.lr,
                        missing_eos_penalty=r.missing_eos_penalty, seed=r.seed)
    t0 = time.perf_counter()
    hist = ppo.train_ppo(task.policy, task.ref, task.tokenizer, task.reward_fn, task.prompts, cfg,
                         critic=ppo.Critic(task.reward_model), progress=progress)
    seconds = time.perf_counter() - t0
    report = {"recipe": asdict(r), "ppo_config": asdict(cfg), "base": ppo.POLICY, "reward_model": ppo.REWARD_MODEL,
              "trainer": "rl4lmt.ppo.train_ppo (critic = Critic(reward model))", "seconds": round(seconds, 1),
              "eval_before": before, "eval_after": evaluate(task.policy, task),
              "train_proxy": [round(h["reward/proxy"], 4) for h in hist],
              "train_kl": [round(h["kl/ref"], 4) for h in hist]}
    _save(task.policy, task.tokenizer, Path(out_dir), report)
    return report


def train_dpo_model(out_dir, recipe: DPORecipe | None = None, progress: bool = True) -> dict:
    """Train ``tiny-reviews-dpo`` into ``out_dir``; return the report written as ``training.json``."""
    from trl import DPOConfig, DPOTrainer

    from rl4lmt import reward
    from rl4lmt.world import TinyReviews

    r = recipe or DPORecipe()
    torch.set_num_threads(r.threads)
    set_seed(r.seed)
    task = ppo.load_task(n_prompts=256, n_eval=48, device="cpu", seed=0)  # same held-out prompts as PPO
    before = evaluate(task.policy, task)
    data = reward.preference_data(task.ref, task.tokenizer, TinyReviews(), r.n_prompts, k=r.k, seed=r.data_seed)
    data = data.select_columns(["prompt", "chosen", "rejected"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, save_strategy="no", logging_steps=10,
                           disable_tqdm=not progress, per_device_train_batch_size=r.batch_size, learning_rate=r.lr,
                           beta=r.beta, max_steps=r.steps, max_length=None, seed=r.seed,
                           lr_scheduler_type="constant")
        trainer = DPOTrainer(model=task.policy, ref_model=copy.deepcopy(task.ref), args=config, train_dataset=data,
                             processing_class=task.tokenizer)
        trainer.train()
        losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    seconds = time.perf_counter() - t0
    policy = trainer.model.cpu().eval()
    report = {"recipe": asdict(r), "base": ppo.POLICY, "pairs": len(data),
              "trainer": "trl.DPOTrainer on rl4lmt.reward.preference_data", "seconds": round(seconds, 1),
              "eval_before": before, "eval_after": evaluate(policy, task), "loss_every_10": losses}
    _save(policy, task.tokenizer, Path(out_dir), report)
    return report


def _main(argv=None) -> None:
    from rl4lmt.zoo import checkpoint_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m rl4lmt.rlhf_models", description=__doc__.split("\n")[0])
    p.add_argument("which", choices=["ppo", "dpo", "all"])
    p.add_argument("--out", default=None, help="output folder (one model; default: the package's checkpoint)")
    args = p.parse_args(argv)
    jobs = {"ppo": ("tiny-reviews-ppo", train_ppo_model), "dpo": ("tiny-reviews-dpo", train_dpo_model)}
    for key in (["ppo", "dpo"] if args.which == "all" else [args.which]):
        name, fn = jobs[key]
        out = Path(args.out) / name if args.out and args.which == "all" else Path(args.out or checkpoint_dir(name))
        rep = fn(out)
        print(name, json.dumps({k: rep[k] for k in ("seconds", "eval_before", "eval_after")}, indent=1))


if __name__ == "__main__":
    _main()
