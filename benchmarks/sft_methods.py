"""Chapter 5's comparison of fine-tuning methods on the same data, seed and step budget.

    .venv/bin/python benchmarks/sft_methods.py [--steps 300] [--only full,lora-attn-r4] [--n-eval 500]
    .venv/bin/python benchmarks/sft_methods.py --only lora-attn-r4 --lr 3e-2 --out /tmp/probe.json  # an lr probe

Every method starts from the shipped ``tiny-reviews`` and trains with TRL's ``SFTTrainer``
(completion-only loss, batch 32, AdamW with warm-up + cosine, one CPU thread) on the same
demonstrations (``rl4lmt.sft.instruction_dataset``, seed 0), for the same number of steps:

- ``full``: every weight (full fine-tuning), lr 3e-3;
- ``lora-attn-r{1,4,16}``: peft LoRA (alpha = 2r) on the attention's query/key/value projection
  (``c_attn``), lr 1e-2: the largest stable one (at 3e-2 the loss rises, see ``lr_probes`` in the
  results, measured with a scratch copy of this recipe);
- ``lora-all-r{4,16}``: peft LoRA on every linear layer of the blocks (``"all-linear"``);
- ``qlora-all-r4``: the same on a base whose frozen weights went through NF4 (4-bit, double
  quantisation; ``rl4lmt.sft.nf4_roundtrip_``): QLoRA's numbers, not its memory saving;
- ``prompt-k16``: peft prompt tuning, 16 virtual tokens initialised from words' embeddings
  (``prompt_tuning_init="TEXT"``), lr 1e-1; ``prompt-k16-random-init``: peft's default N(0, 1)
  init, ten times longer than a word's embedding (lr 3e-2).

The ``curve-*`` runs train full fine-tuning, LoRA and prompt tuning for 1000 steps and score them
every 100 steps (on the first ``CURVE_N`` held-out instructions): at 300 steps every PEFT method is
still on the plateau where the model writes reviews but ignores the request; LoRA leaves it later
than full fine-tuning does, prompt tuning not within 1000 steps.

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
    # peft's default (random) init was 10x the words' embedding norm (measured first: 0.8 % of the world's score)
    "prompt-k16": dict(kind="prompt", k=16, lr=1e-1, init_text="write a review about the"),
    "prompt-k16-random-init": dict(kind="prompt", k=16, lr=3e-2),
    "unseen-combos": dict(kind="full", lr=3e-3, unseen=12),
    "data-n100": dict(kind="full", lr=3e-3, n_train=100),
    "data-n1000": dict(kind="full", lr=3e-3, n_train=1000),
    "lora-attn-r1": dict(kind="lora", r=1, targets=("c_attn",), lr=1e-2, new_tokens=True),
    "lora-attn-r16": dict(kind="lora", r=16, targets=("c_attn",), lr=1e-2, new_tokens=True),
    "lora-all-r16": dict(kind="lora", r=16, targets=ALL_LINEAR, lr=1e-2, new_tokens=True),
    # measured first (lr 1e-2), kept to show the failure: LoRA with every embedding frozen
    "lora-attn-r4-frozen-emb": dict(kind="lora", r=4, targets=("c_attn",), lr=1e-2),
    "lora-all-r4-frozen-emb": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2),
    # learning curves: a longer budget, scored every `curve_every` steps on the first `curve_n`
    # held-out instructions (score vs steps: does PEFT just need more steps than full fine-tuning?)
    "curve-full": dict(kind="full", lr=3e-3, steps=1000, curve_every=100),
    "curve-lora-all-r4": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2, new_tokens=True, steps=1000,
                              curve_every=100),
    "curve-lora-all-r4-frozen-emb": dict(kind="lora", r=4, targets=ALL_LINEAR, lr=1e-2, steps=1000, curve_every=100),
    "curve-prompt-k16": dict(kind="prompt", k=16, lr=1e-1, init_text="write a review about the", steps=1000,
                             curve_every=100),
}
CURVE_N = 200  # held-out instructions per point of a learning curve


def unseen_combos(k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` (request, topic) combinations drawn without replacement, never to be trained on."""
    combos = [(r, a) for r in sft.REQUESTS for a in ASPECTS]
    idx = np.random.default_rng(seed).choice(len(combos), size=k, replace=False)
    return [combos[i] for i in sorted(idx)]


def _max_new_tokens(spec: dict, tok, instructions, n_positions: int = 64, default: int = 40) -> int:
    """Response budget: a soft prompt's k virtual tokens also take positions of GPT-2's n_positions."""
    if spec["kind"] != "prompt":
        return default
    return min(default, n_positions - spec["k"] - max(len(tok(p)["input_ids"]) for p in instructions))


def _curve_callback(spec: dict, tok, eval_pairs, world, curve: list):
    """A trainer callback that scores the model every ``spec["curve_every"]`` steps (appends to ``curve``)."""
    from transformers import TrainerCallback

    pairs = eval_pairs[:CURVE_N]
    ceiling = float(np.mean([world.instruction_score(p, r) for p, r in pairs]))

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % spec["curve_every"] and state.global_step != state.max_steps:
                return
            was_training = model.training
            scored = model.eval()
            if spec["kind"] == "prompt":
                scored = sft.SoftPromptLM(model.get_base_model(), model.get_prompt_embedding_to_save("default"))
            prompts = [p for p, _ in pairs]
            ev = sft.evaluate_instructions(scored, tok, prompts, world=world, seed=0,
                                           max_new_tokens=_max_new_tokens(spec, tok, prompts))
            model.train(was_training)
            losses = [h["loss"] for h in state.log_history if "loss" in h][-3:]
            curve.append({"step": state.global_step, "fraction_of_ceiling": ev["score"] / ceiling,
                          "grammatical": ev["grammatical"], "loss": float(np.mean(losses)) if losses else None})
            print("curve", curve[-1], flush=True)

    return Curve()


def run(name: str, spec: dict, steps: int, eval_pairs, reviews, world) -> dict:
    from peft import LoraConfig, PromptTuningConfig

    torch.set_num_threads(1)
    steps = spec.get("steps", steps)
    load_start = os.getloadavg()[0]
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
        # peft's default init draws the soft prompt from N(0, 1), far larger than any word's embedding;
        # "TEXT" starts it at the embeddings of `init_text`'s words (repeated to k tokens)
        init = {} if "init_text" not in spec else dict(
            prompt_tuning_init="TEXT", prompt_tuning_init_text=spec["init_text"],
            tokenizer_name_or_path=str(zoo.checkpoint_dir("tiny-reviews")))
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec["k"], **init)
    curve: list = []
    callbacks = [_curve_callback(spec, tok, eval_pairs, world, curve)] if "curve_every" in spec else None
    trainer = sft.make_trainer(model, tok, data, cfg, peft_config=peft_config, use_cpu=True, callbacks=callbacks)
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
    max_new = _max_new_tokens(spec, tok, instructions, trained.config.n_positions)
    ev = sft.evaluate_instructions(trained, tok, instructions, world=world, seed=0, max_new_tokens=max_new)
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
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],  # at the start and the end
    }
    if max_new != 40:
        result["max_new_tokens"] = max_new  # responses longer than this count as unfinished (score 0)
    if curve:
        result["curve"] = curve  # train_seconds of a curve run includes the scoring along the way
    if exclude:
        seen = [i for i, (p, _) in enumerate(eval_pairs) if sft.instruction_combo(p) not in set(exclude)]
        unseen_pairs = sft.instruction_pairs(len(eval_pairs), seed=30_000)
        unseen_pairs = [pr for pr in unseen_pairs if sft.instruction_combo(pr[0]) in set(exclude)]
        extra = sft.instruction_pairs(20 * len(eval_pairs), seed=30_001)
        unseen_pairs += [pr for pr in extra if sft.instruction_combo(pr[0]) in set(exclude)]
        unseen_pairs = unseen_pairs[: len(eval_pairs) // 2]
        ev_u = sft.evaluate_instructions(trained, tok, [p for p, _ in unseen_pairs], world=world, seed=0,
                                         max_new_tokens=max_new)
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
    ap.add_argument("--lr", type=float, default=None,
                    help="one learning rate for every selected method instead of its own (an lr probe: "
                         "e.g. --only lora-attn-r4 --lr 3e-2 --out /tmp/probe.json; rows are named NAME@lr)")
    args = ap.parse_args()
    if args.lr is not None and args.out.resolve() == OUT.resolve():
        ap.error("--lr runs are probes: write them to another file with --out, not into the chapter's table")
    if args.lr is not None and not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    out = args.out
    torch.set_num_threads(1)
    world = TinyReviews()
    eval_pairs = sft.instruction_pairs(args.n_eval, seed=10_000)  # held out: training uses seed 0
    reviews = world.sample(500, seed=20_000)
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("steps") not in (None, args.steps) or results.get("n_eval") not in (None, args.n_eval):
        results = {}  # a different budget: start afresh
    results.update({"steps": args.steps, "n_eval": args.n_eval, "curve_n": CURVE_N, "batch_size": 32, "threads": 1,
                    "machine": platform.platform(), "load_average_at_start": os.getloadavg()[0]})
    results.setdefault("methods", {})
    results.update(reference_rows(eval_pairs, reviews, world))
    names = args.only.split(",") if args.only else list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    for name in names:
        spec, row = dict(METHODS[name]), name
        if args.lr is not None:
            spec["lr"], row = args.lr, f"{name}@lr{args.lr:g}"
        print(f"== {row}", flush=True)
        results["methods"][row] = run(name, spec, args.steps, eval_pairs, reviews, world)
        print(json.dumps(results["methods"][row]), flush=True)
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=1))  # after every method: a crash keeps the rest


if __name__ == "__main__":
    main()
