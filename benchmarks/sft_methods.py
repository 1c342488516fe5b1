"""Chapter 5's comparison of fine-tuning methods on the same data, seed and step budget.

    .venv/bin/python benchmarks/sft_methods.py [--steps 300] [--only full,lora-attn-r4] [--n-eval 500]

Every method starts from the shipped ``tiny-reviews`` and trains with TRL's ``SFTTrainer``
(completion-only loss, batch 32, AdamW with warm-up + cosine, one CPU thread) on the same
demonstrations (``rl4lmt.sft.instruction_dataset``, seed 0), for the same number of steps:

- ``full``: every weight (full fine-tuning);
- ``lora-attn-r{1,4,16}``: peft LoRA on the attention's query/key/value projection (``c_attn``);
- ``lora-all-r4``: peft LoRA on every linear layer of the blocks (``"all-linear"``);
- ``qlora-all-r4``: the same on a base whose frozen weights went through NF4 (4-bit, double
  quantisation; ``rl4lmt.sft.nf4_roundtrip_``): QLoRA's numbers, not its memory saving;
- ``prompt-k16``: peft prompt tuning, 16 virtual tokens.

The LoRA runs also train a copy of the input embedding (peft's ``modules_to_save=["wte"]``; the
tied output head stays frozen): the instruction words that plain reviews never contain
(``NEW_WORDS``) were never an input in pretraining, which left their embeddings nearly parallel,
so with every embedding frozen LoRA cannot tell "positive" from "negative"; the ``*-frozen-emb``
runs show it. (peft's ``trainable_token_indices`` would train just those rows, but its wrapper of
the tied head breaks TRL's fused loss in this version; a LoRA update of ``wte`` trained unstably
and, merged, also changes the tied head.)

Two more experiments with full fine-tuning answer "how much data?" (``data-n{..}``: the number of
distinct demonstrations, same steps) and "does it generalise?" (``unseen-combos``: 12 of the 72
(request, topic) combinations are never trained on, and scored separately).

For each run: trainable parameters, training wall time, the held-out instruction score (mean
``TinyReviews.instruction_score`` of one response sampled at T = 1 per instruction, and its
fraction of the world's own responses' score), the grammatical rate, and forgetting (the
adapted model's cross-entropy on plain world reviews minus the world's own, in nats per token;
``forgetting_unplugged``: the same with the adapter or soft prompt removed, which PEFT allows).
Results go to benchmarks/results/sft_methods.json; wall times from a shared machine are noisy.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rl4lmt import sft, zoo  # noqa: E402
from rl4lmt.world import ASPECTS, TinyReviews  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "sft_methods.json"
ALL_LINEAR = ("c_attn", "c_proj", "c_fc")
# the instruction words that plain reviews never use: the pretrained model never saw them as input,
# so their (tied) embeddings all point the same way; a frozen-embedding method cannot tell
# "positive" from "negative" unless the embedding adapts too
NEW_WORDS = (":", "about", "negative", "positive", "review", "write")
METHODS = {  # in the order they run (the most telling first)
    "full": dict(kind="full", lr=3e-3),
    "lora-attn-r4": dict(kind="lora", r=4, targets=("c_attn",), lr=1e-2, new_tokens=True),
    "lora-all-r4": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2, new_tokens=True),
    "qlora-all-r4": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2, new_tokens=True, nf4=True),
    "prompt-k16": dict(kind="prompt", k=16, lr=3e-2),
    "unseen-combos": dict(kind="full", lr=3e-3, unseen=12),
    "data-n100": dict(kind="full", lr=3e-3, n_train=100),
    "data-n1000": dict(kind="full", lr=3e-3, n_train=1000),
    "lora-attn-r1": dict(kind="lora", r=1, targets=("c_attn",), lr=1e-2, new_tokens=True),
    "lora-attn-r16": dict(kind="lora", r=16, targets=("c_attn",), lr=1e-2, new_tokens=True),
    # measured first (lr 1e-2), kept to show the failure: LoRA with every embedding frozen
    "lora-attn-r4-frozen-emb": dict(kind="lora", r=4, targets=("c_attn",), lr=1e-2),
    "lora-all-r4-frozen-emb": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2),
}


def unseen_combos(k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` (request, topic) combinations drawn without replacement, never to be trained on."""
    combos = [(r, a) for r in sft.REQUESTS for a in ASPECTS]
    idx = np.random.default_rng(seed).choice(len(combos), size=k, replace=False)
    return [combos[i] for i in sorted(idx)]


def run(name: str, spec: dict, steps: int, eval_pairs, reviews, world) -> dict:
    from peft import LoraConfig, PromptTuningConfig

    torch.set_num_threads(1)
    model, tok = zoo.load("tiny-reviews", device="cpu")
    if spec.get("nf4"):
        sft.nf4_roundtrip_(model, target_modules=ALL_LINEAR)
    model.train()
    exclude = unseen_combos(spec["unseen"]) if "unseen" in spec else ()
    cfg = sft.SFTRecipe(n_train=spec.get("n_train", steps * 32), steps=steps, lr=spec["lr"])
    data = sft.instruction_dataset(cfg.n_train, exclude=exclude, seed=cfg.seed)
    peft_config = None
    if spec["kind"] == "lora":
        # a trainable copy of the input embedding (the tied output head stays frozen) lets the new words move apart
        peft_config = LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"], lora_dropout=0.0, bias="none",
                                 target_modules=list(spec["targets"]), fan_in_fan_out=True, task_type="CAUSAL_LM",
                                 modules_to_save=["wte"] if spec.get("new_tokens") else None)
    elif spec["kind"] == "prompt":
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec["k"])
    trainer = sft.make_trainer(model, tok, data, cfg, peft_config=peft_config, use_cpu=True)
    trainable, total = sft.count_parameters(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trained = trainer.model.eval()
    # PEFT leaves the base intact: unplug the adapter / soft prompt and the base model is back
    # (for QLoRA: the 4-bit base, so this measures the quantisation's own cost)
    if spec["kind"] == "lora":
        with trained.disable_adapter():
            ce_unplugged = sft.review_cross_entropy(trained, tok, reviews)
        trained = trained.merge_and_unload()  # the deployed model: adapter folded into W
    elif spec["kind"] == "prompt":
        base = trained.get_base_model()
        ce_unplugged = sft.review_cross_entropy(base, tok, reviews)
        trained = sft.SoftPromptLM(base, trained.get_prompt_embedding_to_save("default")).eval()
    instructions = [p for p, _ in eval_pairs]
    ev = sft.evaluate_instructions(trained, tok, instructions, world=world, seed=0)
    ceiling = float(np.mean([world.instruction_score(p, r) for p, r in eval_pairs]))
    ce = sft.review_cross_entropy(trained, tok, reviews)
    result = {
        "method": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
        "steps": steps, "n_train": cfg.n_train, "trainable_params": trainable, "total_params": total,
        "train_seconds": round(seconds, 1), "score": ev["score"], "fraction_of_ceiling": ev["score"] / ceiling,
        "grammatical": ev["grammatical"], "review_cross_entropy": ce,
        "forgetting": ce - world.cross_entropy(reviews),
        "forgetting_unplugged": (ce_unplugged if spec["kind"] != "full" else ce) - world.cross_entropy(reviews),
        "final_loss": float(np.mean([h["loss"] for h in trainer.state.log_history if "loss" in h][-5:])),
    }
    if exclude:
        seen = [i for i, (p, _) in enumerate(eval_pairs) if sft.instruction_combo(p) not in set(exclude)]
        unseen_pairs = sft.instruction_pairs(len(eval_pairs), seed=30_000)
        unseen_pairs = [pr for pr in unseen_pairs if sft.instruction_combo(pr[0]) in set(exclude)]
        extra = sft.instruction_pairs(20 * len(eval_pairs), seed=30_001)
        unseen_pairs += [pr for pr in extra if sft.instruction_combo(pr[0]) in set(exclude)]
        unseen_pairs = unseen_pairs[: len(eval_pairs) // 2]
        ev_u = sft.evaluate_instructions(trained, tok, [p for p, _ in unseen_pairs], world=world, seed=0)
        ceil_u = float(np.mean([world.instruction_score(p, r) for p, r in unseen_pairs]))
        result.update({
            "excluded": [list(c) for c in exclude],
            "seen_fraction_of_ceiling": float(np.mean([ev["scores"][i] for i in seen]))
            / float(np.mean([world.instruction_score(*eval_pairs[i]) for i in seen])),
            "unseen_n": len(unseen_pairs), "unseen_score": ev_u["score"], "unseen_ceiling": ceil_u,
            "unseen_fraction_of_ceiling": ev_u["score"] / ceil_u, "unseen_grammatical": ev_u["grammatical"],
        })
    return result


def reference_rows(eval_pairs, reviews, world) -> dict:
    """The pretrained model (no fine-tuning) and the world itself, measured the same way."""
    model, tok = zoo.load("tiny-reviews", device="cpu")
    ev = sft.evaluate_instructions(model, tok, [p for p, _ in eval_pairs], world=world, seed=0)
    ceiling = float(np.mean([world.instruction_score(p, r) for p, r in eval_pairs]))
    ce = sft.review_cross_entropy(model, tok, reviews)
    return {"world_ceiling": ceiling, "world_cross_entropy": world.cross_entropy(reviews),
            "pretrained": {"score": ev["score"], "fraction_of_ceiling": ev["score"] / ceiling,
                           "grammatical": ev["grammatical"], "review_cross_entropy": ce,
                           "forgetting": ce - world.cross_entropy(reviews)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", default=None, help="comma-separated method names (default: all)")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out = args.out
    torch.set_num_threads(1)
    world = TinyReviews()
    eval_pairs = sft.instruction_pairs(args.n_eval, seed=10_000)  # held out: training uses seed 0
    reviews = world.sample(500, seed=20_000)
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("steps") not in (None, args.steps) or results.get("n_eval") not in (None, args.n_eval):
        results = {}  # a different budget: start afresh
    results.update({"steps": args.steps, "n_eval": args.n_eval, "batch_size": 32, "threads": 1,
                    "machine": platform.platform(), "load_average_at_start": os.getloadavg()[0]})
    results.setdefault("methods", {})
    results.update(reference_rows(eval_pairs, reviews, world))
    names = args.only.split(",") if args.only else list(METHODS)
    for name in names:
        print(f"== {name}", flush=True)
        results["methods"][name] = run(name, METHODS[name], args.steps, eval_pairs, reviews, world)
        print(json.dumps(results["methods"][name]), flush=True)
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=1))  # after every method: a crash keeps the rest


if __name__ == "__main__":
    main()
