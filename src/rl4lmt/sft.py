"""Supervised fine-tuning (SFT): instruction data, LoRA, NF4 quantisation, parameter counting.

RLHF's step 1 turns the pretrained tiny GPT-2 (which writes reviews but ignores requests) into an
instruction follower by *behavioural cloning*: maximum likelihood on demonstrations
``(x, y)`` = (instruction, the world's own answer), with the loss on the response tokens only.
The module holds

- the SFT data: :func:`instruction_dataset`, TRL's prompt/completion format built from
  ``TinyReviews.instructions``;
- the training recipe of the shipped SFT model (TRL's ``SFTTrainer``, completion-only loss):
  :class:`SFTRecipe`, :func:`make_trainer`, :func:`train`;
- its evaluation against the world's truth: :func:`generate_responses`,
  :func:`evaluate_instructions` (``TinyReviews.instruction_score``, grammaticality) and
  :func:`review_cross_entropy` (forgetting, against the entropy floor);
- the from-scratch pieces the chapter teaches, each checked against its library in the tests:
  :func:`completion_only_loss` (= TRL), :class:`LoRALinear`/:func:`inject_lora`/
  :func:`merge_lora` (= peft), :func:`quantize_nf4`/:func:`dequantize_nf4` (= bitsandbytes),
  :func:`count_parameters` and :func:`lora_parameter_count` (the lecture's worked numbers).

Rebuild the shipped SFT model ``tiny-reviews-sft`` (same seed, same weights on the CPU)::

    python -m rl4lmt.sft train            # or: make sft-model
    python -m rl4lmt.sft evaluate         # its quality on held-out instructions
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from rl4lmt.utils import model_device, set_seed
from rl4lmt.world import ASPECTS, TinyReviews

# TRL and peft import bitsandbytes, whose CPU backend warns on every import that it could not fetch an
# optional kernel from the hub; the course never needs it (and is offline), so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = [
    "REQUESTS", "instruction_combo", "instruction_pairs", "instruction_dataset",
    "tokenize_sft", "completion_only_loss",
    "SFTRecipe", "sft_config", "make_trainer", "train",
    "generate_responses", "evaluate_instructions", "review_cross_entropy",
    "LoRALinear", "inject_lora", "merge_lora", "SoftPromptLM", "count_parameters", "lora_parameter_count",
    "NF4_BLOCKSIZE", "nf4_codebook", "NF4Tensor", "quantize_nf4", "dequantize_nf4",
    "bits_per_parameter", "nf4_roundtrip_",
]

REQUESTS = ("very negative", "negative", "positive", "very positive")


# ----------------------------------------------------------------------------------------------
# SFT data: (instruction, response) demonstrations in TRL's prompt/completion format
# ----------------------------------------------------------------------------------------------
def instruction_combo(instruction: str) -> tuple[str, str]:
    """``(request, topic)`` of an instruction "write a [very] positive|negative review about the <topic> :"."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    words = instruction.split()
    request, topic = " ".join(words[2:-5]), words[-2] if len(words) >= 2 else ""
    if TinyReviews.make_instruction(request, topic) != instruction:  # raises on bad request/topic
        raise ValueError(f"instruction {instruction!r} is not a TinyReviews instruction")
    return request, topic


def _check_combos(exclude) -> set:
    combos = set()
    for item in exclude:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"exclude must hold (request, topic) tuples, got {item!r}")
        TinyReviews.make_instruction(*item)  # ValueError on an unknown request or topic
        combos.add(item)
    if len(combos) == len(REQUESTS) * len(ASPECTS):
        raise ValueError("exclude removes every (request, topic) combination: nothing is left")
    return combos


def instruction_pairs(n: int, *, exclude: Sequence[tuple[str, str]] = (), seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (instruction, response) pairs from ``TinyReviews.instructions``, seeded.

    ``exclude`` lists ``(request, topic)`` combinations never to draw (e.g. to test, on them,
    whether a fine-tuned model generalises to instructions it never saw); the other pairs keep
    the world's distribution (request and topic uniform, the response drawn from the world
    conditioned on both).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    combos = _check_combos(exclude)
    world = TinyReviews(seed=seed)  # its own generator: successive draws continue the stream
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        batch = world.instructions(max(16, n - len(pairs)))
        pairs += [p for p in batch if instruction_combo(p[0]) not in combos]
    return pairs[:n]


def instruction_dataset(n: int, *, exclude: Sequence[tuple[str, str]] = (), seed: int = 0):
    """The SFT data as a ``datasets.Dataset`` in TRL's *prompt/completion* format.

    ``prompt`` is the instruction (it ends with ":"), ``completion`` the world's response with a
    leading space (TRL joins ``prompt + completion`` as text, and the course's tokenizer splits on
    whitespace). TRL appends the EOS to the completion, so the model learns where an answer ends,
    and trains on the completion tokens only (``completion_only_loss``).
    """
    from datasets import Dataset

    pairs = instruction_pairs(n, exclude=exclude, seed=seed)
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [" " + r for _, r in pairs]})


def tokenize_sft(tokenizer, prompts: Sequence[str], completions: Sequence[str]):
    """Token ids of prompt + completion + EOS, right-padded, with a *completion mask*.

    Returns ``(input_ids, attention_mask, completion_mask)``, each ``(batch, time)``:
    ``completion_mask`` is 1 on the completion's tokens and its EOS, 0 on the BOS, the prompt and
    the padding. The prompt is tokenised on its own (the course's tokenizer prepends the BOS), so
    the boundary is exact.
    """
    from rl4lmt.utils import check_texts

    prompts, completions = check_texts(prompts), check_texts(completions)
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions must have the same length, "
                         f"got {len(prompts)} and {len(completions)}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for p, c in zip(prompts, completions):
        p_ids = list(tokenizer(p)["input_ids"])
        c_ids = list(tokenizer(c, add_special_tokens=False)["input_ids"]) + [eos]
        rows.append((p_ids, c_ids))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), eos if pad is None else pad, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p): len(p) + len(c)] = 1
    return input_ids, attention_mask, completion_mask


def completion_only_loss(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""The SFT loss: mean next-token cross-entropy over the *response* tokens only.

    .. math:: L(\theta) = -\frac{1}{N}\sum_{b}\sum_{t} m_{b,t+1}\,\log \pi_\theta(x_{b,t+1}\mid x_{b,\le t}),
              \qquad N = \sum_{b,t} m_{b,t+1}

    where :math:`m` is the completion mask (times the attention mask, if given). Position
    :math:`t` predicts token :math:`t+1`, so the mask is read shifted by one: a prompt or padding
    token is never a target, though the prompt is context for every response token. Averaged
    over all response tokens of the batch, like TRL's ``SFTTrainer`` with
    ``completion_only_loss=True``.
    """
    from rl4lmt.lm import shifted_logprobs

    if not isinstance(completion_mask, torch.Tensor) or completion_mask.shape != input_ids.shape:
        raise ValueError(f"completion_mask must be a tensor of shape {tuple(input_ids.shape)}")
    logp = shifted_logprobs(logits, input_ids)  # (B, T-1): log p(x_{t+1} | x_{<=t})
    m = completion_mask[:, 1:].to(logp.device, logp.dtype)  # target t+1 counts iff it is a response token
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}")
        m = m * attention_mask[:, 1:].to(logp.device, logp.dtype)
    if m.sum() == 0:
        raise ValueError("completion_mask leaves no response token to train on")
    return -(logp * m).sum() / m.sum()


# ----------------------------------------------------------------------------------------------
# The training recipe of the shipped SFT model (TRL's SFTTrainer)
# ----------------------------------------------------------------------------------------------
@dataclass
class SFTRecipe:
    """Data and optimiser settings of ``python -m rl4lmt.sft train`` (the shipped ``tiny-reviews-sft``)."""

    n_train: int = 32_000        # demonstrations (instruction, world response): one epoch
    steps: int = 1000            # optimiser steps of batch_size demonstrations
    batch_size: int = 32
    lr: float = 2e-3             # AdamW, linear warm-up then cosine decay to 0
    warmup: int = 50
    weight_decay: float = 0.0
    seed: int = 0                # data (world draws) and trainer seed
    threads: int = 1             # one thread: the same seed gives the same weights on any machine


def sft_config(cfg: SFTRecipe, output_dir: str | os.PathLike, *, progress: bool = False, **overrides):
    """TRL's ``SFTConfig`` for a recipe: CPU-friendly, no checkpoints, no reporting, completion-only loss."""
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
        completion_only_loss=True,   # the loss counts the response tokens only
        max_length=64, gradient_checkpointing=False,  # a tiny model: recomputation only costs time
        bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        save_strategy="no", report_to=[], logging_steps=10, dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    kwargs.update(overrides)
    import warnings

    with warnings.catch_warnings():  # transformers renames gradient_checkpointing; TRL still sets it
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return SFTConfig(**kwargs)


@contextlib.contextmanager
def _quiet_datasets():
    """No "Tokenizing train dataset" bars on pages and in tests."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()


def make_trainer(model, tokenizer, dataset, cfg: SFTRecipe | None = None, *, peft_config=None,
                 output_dir: str | os.PathLike | None = None, progress: bool = False, callbacks=None, **overrides):
    """A TRL ``SFTTrainer`` for ``model`` on a prompt/completion ``dataset`` (optionally with a peft config).

    ``trainer.train()`` then runs the recipe; ``trainer.model`` is the trained model (a peft model
    when ``peft_config`` is given). ``callbacks``: ``transformers.TrainerCallback`` s (e.g. to score
    the model during training). Extra keyword arguments override :func:`sft_config`'s.
    """
    from trl import SFTTrainer

    cfg = cfg or SFTRecipe()
    output_dir = output_dir or tempfile.mkdtemp(prefix="rl4lmt-sft-")
    args = sft_config(cfg, output_dir, progress=progress, **overrides)
    with _quiet_datasets():
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks)


def checkpoint_dir() -> Path:
    """Where the shipped SFT model lives inside the installed package."""
    from rl4lmt.zoo import checkpoint_dir as _dir

    return _dir("tiny-reviews-sft")


def train(out_dir: str | os.PathLike | None = None, cfg: SFTRecipe | None = None, progress: bool = True) -> dict:
    """Fine-tune the shipped ``tiny-reviews`` on world demonstrations and save ``tiny-reviews-sft``.

    Full fine-tuning with TRL's ``SFTTrainer`` (completion-only loss, AdamW, warm-up + cosine),
    one CPU thread and fixed seeds, so the same command writes the same bytes. Returns a report
    (losses, time) that is also written next to the weights as ``training.json``.
    """
    from rl4lmt.zoo import load

    cfg = cfg or SFTRecipe()
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir()
    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    model, tokenizer = load("tiny-reviews", device="cpu")
    model.train()
    dataset = instruction_dataset(cfg.n_train, seed=cfg.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rl4lmt-sft-") as tmp:
        trainer = make_trainer(model, tokenizer, dataset, cfg, output_dir=tmp, progress=progress,
                               use_cpu=True)
        trainer.train()
    seconds = time.perf_counter() - t0
    model = trainer.model.eval()
    model.config.use_cache = True  # the trainer turns the KV cache off for training; decoding wants it
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    report = {
        "config": asdict(cfg), "base": "tiny-reviews", "trainer": "trl.SFTTrainer (completion_only_loss=True)",
        "seconds": round(seconds, 1), "threads": cfg.threads,
        "loss_every_10": [round(float(h["loss"]), 4) for h in logs],
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1))
    return report


# ----------------------------------------------------------------------------------------------
# Evaluation against the world's truth
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_responses(model, tokenizer, instructions: Sequence[str], *, temperature: float = 1.0,
                       max_new_tokens: int = 40, batch_size: int = 250, seed: int = 0) -> list[str | None]:
    """Sample one response per instruction with ``rl4lmt.decoding.sample`` (pure sampling at ``temperature``).

    The prompt is the instruction after the BOS; the response is what the model writes up to its
    EOS, as words. ``None`` marks a response without an EOS within ``max_new_tokens`` (not a
    complete review). Prompts of equal length are batched together (no left padding needed);
    the draws come from one generator seeded with ``seed``.
    """
    from rl4lmt.decoding import sample
    from rl4lmt.utils import check_texts

    instructions = check_texts(instructions)
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [list(tokenizer(t)["input_ids"]) for t in instructions]
    out: list[str | None] = [None] * len(instructions)
    for length in sorted({len(e) for e in encoded}):
        idx = [i for i, e in enumerate(encoded) if len(e) == length]
        for start in range(0, len(idx), batch_size):
            chunk = idx[start: start + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], device=device)
            seqs = sample(model, ids, max_new_tokens, temperature=temperature, generator=gen,
                          eos_token_id=eos, pad_token_id=pad)[:, length:].tolist()
            for i, row in zip(chunk, seqs):
                if eos in row:
                    out[i] = " ".join(tokenizer.convert_ids_to_tokens(row[: row.index(eos)]))
    return out


def evaluate_instructions(model, tokenizer, instructions: Sequence[str], *, world: TinyReviews | None = None,
                          temperature: float = 1.0, max_new_tokens: int = 40, seed: int = 0) -> dict:
    """How well a model follows instructions, measured by the world: mean score and grammatical rate.

    One sampled response per instruction (:func:`generate_responses`); its score is
    ``TinyReviews.instruction_score`` (the posterior probability that the world wrote it under the
    requested sentiment and topic; 0 for an ungrammatical or unfinished response). Returns
    ``{"score", "grammatical", "finished", "scores", "responses"}``.
    """
    world = world or TinyReviews()
    responses = generate_responses(model, tokenizer, instructions, temperature=temperature,
                                   max_new_tokens=max_new_tokens, seed=seed)
    scores, grammatical = [], []
    for ins, r in zip(instructions, responses):
        ok = r is not None and world.is_grammatical(r)
        grammatical.append(ok)
        scores.append(world.instruction_score(ins, r) if ok else 0.0)
    n = len(scores)
    return {"score": sum(scores) / n, "grammatical": sum(grammatical) / n,
            "finished": sum(r is not None for r in responses) / n, "scores": scores, "responses": responses}


@torch.no_grad()
def review_cross_entropy(model, tokenizer, texts: Sequence[str], *, batch_size: int = 500) -> float:
    """The model's cross-entropy on plain reviews (no instruction), in nats per event.

    :math:`-\\sum_i \\log \\pi(x_i) / \\sum_i (T_i + 1)`, the same event space as
    ``TinyReviews.cross_entropy(texts)`` (the world's own value on the same texts), so the
    difference is the model's excess over the floor. Fine-tuning that raises it has made the
    model forget how to write unprompted reviews (catastrophic forgetting).
    """
    from rl4lmt.lm import token_logprobs
    from rl4lmt.utils import check_texts

    texts = check_texts(texts)
    total, events = 0.0, 0
    for start in range(0, len(texts), batch_size):
        out = token_logprobs(model, tokenizer, texts[start: start + batch_size])
        total += float(out.logprobs.double().sum())
        events += int(out.mask.sum())
    return -total / events


# ----------------------------------------------------------------------------------------------
# LoRA from scratch (checked against peft in the tests)
# ----------------------------------------------------------------------------------------------
def _in_out(base: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a Linear or of transformers' ``Conv1D``.

    GPT-2's ``Conv1D`` is a linear layer that stores its weight transposed, ``(in, out)``, and
    computes ``x @ W + b``; ``nn.Linear`` stores ``(out, in)`` and computes ``x @ W.T + b``.
    """
    from transformers.pytorch_utils import Conv1D

    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1], True
    raise TypeError(f"base must be an nn.Linear or a transformers Conv1D, got {type(base).__name__}")


class LoRALinear(nn.Module):
    r"""A frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

    .. math:: h = W_0 x + b + \frac{\alpha}{r} B A x, \qquad A \in \mathbb R^{r\times k},\;
              B \in \mathbb R^{d\times r}

    for a base weight :math:`W_0 \in \mathbb R^{d\times k}` (``d`` outputs, ``k`` inputs). ``A``
    starts random (Kaiming-uniform, as in peft) and ``B`` at zero, so :math:`\Delta W = BA = 0`:
    training starts exactly at the pretrained model. Only ``A`` and ``B`` are trainable:
    :math:`r(d + k)` parameters instead of :math:`dk`.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, *, generator: torch.Generator | None = None):
        super().__init__()
        k, d, self.fan_in_fan_out = _in_out(base)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r  # the update is scaled by alpha / r, not alpha
        for p in self.base.parameters():
            p.requires_grad_(False)  # W_0 and b stay frozen
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, k, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(d, r, device=w.device, dtype=w.dtype))  # B = 0: start at W_0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the low-rank path never forms the d x k matrix BA: two thin matmuls, r(d + k) per token
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\Delta W = \frac{\alpha}{r} B A`, shape ``(d, k)`` (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with :math:`W = W_0 + \\frac{\\alpha}{r}BA` folded in: no extra inference cost."""
        import copy

        layer = copy.deepcopy(self.base)
        delta = self.delta_weight()
        layer.weight += delta.T if self.fan_in_fan_out else delta  # Conv1D stores W transposed
        for p in layer.parameters():
            p.requires_grad_(False)
        return layer


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_lora(model: nn.Module, r: int = 8, alpha: float = 16, *,
                target_modules: Sequence[str] = ("c_attn",), seed: int = 0) -> nn.Module:
    """Freeze ``model`` and wrap each target layer in a :class:`LoRALinear` (in place; returns ``model``).

    A layer is a target when the last part of its name is in ``target_modules`` (peft's rule):
    for GPT-2, ``("c_attn",)`` is the attention's fused query/key/value projection,
    ``("c_attn", "c_proj", "c_fc")`` every linear layer of the blocks (peft's ``"all-linear"``,
    which leaves the output head alone). The ``A`` matrices are drawn from a generator seeded
    with ``seed``, in module order.
    """
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    targets = [name for name, m in model.named_modules()
               if name.rpartition(".")[2] in target_modules and not isinstance(m, LoRALinear)]
    if not targets:
        raise ValueError(f"target_modules {tuple(target_modules)} match no layer of the model")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name in targets:
        base = model.get_submodule(name)
        lora = LoRALinear(base, r, alpha, generator=gen if base.weight.device.type == "cpu" else None)
        _replace(model, name, lora)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged base layer (in place; returns ``model``)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _replace(model, name, m.merged())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a shared tensor counts once (GPT-2 ties its head to the embedding)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    trainable = total = 0
    for p in model.parameters():  # parameters() yields a tied tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def lora_parameter_count(d: int, k: int, r: int) -> dict:
    """The lecture's count for one ``d x k`` weight: full ``dk`` vs LoRA ``rk + dr`` trainable parameters.

    ``A`` is ``r x k`` (``rk`` parameters), ``B`` is ``d x r`` (``dr``); the reduction is
    ``1 - r(d + k) / (dk)``. For the base Transformer's ``512 x 64`` weight and ``r = 8``:
    512 + 4,096 = 4,608 instead of 32,768, 86 % fewer.
    """
    for name, v in (("d", d), ("k", k), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    full, a, b = d * k, r * k, d * r
    return {"full": full, "A": a, "B": b, "lora": a + b, "reduction": 1 - (a + b) / full}


class SoftPromptLM(nn.Module):
    r"""Prompt tuning (Lester et al., 2021): a frozen causal LM read after ``k`` trainable vectors.

    The input becomes :math:`[P; E(x)]` with :math:`P \in \mathbb R^{k\times d}` the *soft
    prompt* (vectors in embedding space that need not be any word's embedding) and :math:`E(x)`
    the frozen embeddings of the tokens. Only :math:`P` is trained: ``k * d`` parameters, one
    soft prompt per task, swapped at inference. The logits of the ``k`` virtual positions are
    dropped, so outputs line up with ``input_ids`` as for the bare model; works with a cache
    (``rl4lmt.decoding``'s samplers) because the prompt is prepended on the first call only.
    """

    def __init__(self, model: nn.Module, prompt: torch.Tensor):
        super().__init__()
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2:
            raise ValueError(f"prompt must be a (k, d) tensor, got {getattr(prompt, 'shape', type(prompt))}")
        d = model.get_input_embeddings().weight.shape[1]
        if prompt.shape[1] != d:
            raise ValueError(f"prompt must have the embedding width {d}, got {prompt.shape[1]}")
        self.model, self.config = model, model.config
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.prompt = nn.Parameter(prompt.detach().clone().to(model.get_input_embeddings().weight))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, use_cache: bool | None = None, **kwargs):
        k, batch = self.prompt.shape[0], input_ids.shape[0]
        embeds = self.model.get_input_embeddings()(input_ids)
        first = past_key_values is None or past_key_values.get_seq_length() == 0
        if first:  # the soft prompt goes in once; later steps find it in the cache
            embeds = torch.cat([self.prompt.expand(batch, -1, -1), embeds], dim=1)
        if attention_mask is not None:
            ones = torch.ones(batch, k, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask,
                         past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        if first:
            out.logits = out.logits[:, k:]  # drop the virtual positions' predictions
        return out


# ----------------------------------------------------------------------------------------------
# NF4: 4-bit NormalFloat block-wise quantisation with double quantisation (QLoRA)
# ----------------------------------------------------------------------------------------------
NF4_BLOCKSIZE = 64


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 values (Dettmers et al., 2023): quantiles of a standard normal, scaled to [-1, 1].

    Equal-probability bins of :math:`N(0, 1)` are information-theoretically optimal for normally
    distributed weights. To have an exact zero, the positive half takes 8 quantiles and the
    negative half 7: :math:`q = \\Phi^{-1}(p)` for ``p`` evenly spaced from ``0.5`` to
    ``delta = 0.9677083`` (the paper's choice of outermost probability), then each half is
    divided by its largest value so that the code spans exactly ``[-1, 1]``.
    """
    delta = 0.9677083
    pos = torch.special.ndtri(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1])  # 8 positive
    neg = -torch.special.ndtri(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1])  # 7 negative
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (values / values.max()).float()


class NF4Tensor(NamedTuple):
    """A tensor stored in NF4: 4-bit codes, one scale per block, scales themselves quantised.

    - ``codes`` ``uint8 (n_blocks, blocksize)``: indices into :func:`nf4_codebook` (4 bits of
      information each; a real kernel packs two per byte);
    - ``absmax`` ``float32 (n_blocks,)``: the scales when there is no double quantisation, else
      ``None``;
    - ``absmax_codes`` ``int8 (n_blocks,)``, ``absmax_scale`` ``float32 (n_dq_blocks,)``,
      ``absmax_offset`` ``float``: the double-quantised scales (8-bit codes of
      ``absmax - offset`` with one float per ``dq_blocksize`` scales);
    - ``shape``, ``dtype``, ``blocksize``, ``dq_blocksize``: to rebuild the tensor.
    """

    codes: torch.Tensor
    absmax: torch.Tensor | None
    absmax_codes: torch.Tensor | None
    absmax_scale: torch.Tensor | None
    absmax_offset: float
    shape: tuple
    dtype: torch.dtype
    blocksize: int
    dq_blocksize: int


def quantize_nf4(w: torch.Tensor, *, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                 dq_blocksize: int = 256) -> NF4Tensor:
    r"""Block-wise NF4 quantisation of a weight tensor, optionally with double quantisation.

    The flattened tensor is cut into blocks of ``blocksize`` values; each block is divided by its
    absolute maximum :math:`c_b` (so it lies in [-1, 1]) and each value is rounded to the nearest
    of the 16 NF4 values. Reconstruction: :math:`\hat w = c_b\, q_{code}`, with error at most
    :math:`c_b \cdot g / 2` per value, ``g`` the widest gap between neighbouring NF4 values.

    Double quantisation (QLoRA) stores the scales :math:`c_b` themselves in 8 bits: subtract
    their mean, then symmetric int8 with one float32 scale per ``dq_blocksize`` of them. That
    costs :math:`8/64 + 32/(64\cdot256) \approx 0.127` bits per parameter instead of
    :math:`32/64 = 0.5` (:func:`bits_per_parameter`).
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {getattr(w, 'dtype', type(w))}")
    if w.numel() == 0:
        raise ValueError("w must not be empty")
    for name, v in (("blocksize", blocksize), ("dq_blocksize", dq_blocksize)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    code = nf4_codebook().to(w.device)
    flat = w.detach().float().flatten()
    n_blocks = -(-flat.numel() // blocksize)
    blocks = torch.zeros(n_blocks * blocksize, device=w.device)
    blocks[: flat.numel()] = flat
    blocks = blocks.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]
    # nearest code value = which midpoint interval the value falls in
    midpoints = (code[1:] + code[:-1]) / 2
    codes = torch.bucketize(normed, midpoints).to(torch.uint8)
    if not double_quant:
        return NF4Tensor(codes, absmax, None, None, 0.0, tuple(w.shape), w.dtype, blocksize, dq_blocksize)
    offset = float(absmax.mean())
    centred = absmax - offset
    n_dq = -(-n_blocks // dq_blocksize)
    padded = torch.zeros(n_dq * dq_blocksize, device=w.device)
    padded[:n_blocks] = centred
    scale = padded.view(n_dq, dq_blocksize).abs().amax(dim=1) / 127
    q = torch.round(padded.view(n_dq, dq_blocksize) / scale.clamp(min=torch.finfo(torch.float32).tiny)[:, None])
    absmax_codes = q.clamp(-127, 127).to(torch.int8).flatten()[:n_blocks]
    return NF4Tensor(codes, None, absmax_codes, scale, offset, tuple(w.shape), w.dtype, blocksize, dq_blocksize)


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """Rebuild the tensor from its NF4 form, :math:`\\hat w = \\hat c_b\\, q_{code}`, in its dtype and shape."""
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"q must be an NF4Tensor from quantize_nf4, got {type(q).__name__}")
    code = nf4_codebook().to(q.codes.device)
    if q.absmax is not None:
        absmax = q.absmax
    else:
        scale = q.absmax_scale.repeat_interleave(q.dq_blocksize)[: q.absmax_codes.numel()]
        absmax = q.absmax_codes.float() * scale + q.absmax_offset
    values = code[q.codes.long()] * absmax[:, None]
    n = math.prod(q.shape)
    return values.flatten()[:n].view(q.shape).to(q.dtype)


def bits_per_parameter(blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True, dq_blocksize: int = 256) -> float:
    """Storage per weight: 4 bits of code plus each block's share of its scale.

    Without double quantisation a float32 scale per block: :math:`4 + 32/64 = 4.5` bits. With it,
    an 8-bit scale per block and a float32 per ``dq_blocksize`` blocks:
    :math:`4 + 8/64 + 32/(64 \\cdot 256) \\approx 4.127` bits (QLoRA's saving of about 0.37 bits
    per parameter).
    """
    for name, v in (("blocksize", blocksize), ("dq_blocksize", dq_blocksize)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)


@torch.no_grad()
def nf4_roundtrip_(model: nn.Module, *, target_modules: Sequence[str] = ("c_attn", "c_proj", "c_fc"),
                   double_quant: bool = True) -> nn.Module:
    """Replace the weights of the target layers by their NF4 reconstruction (in place; returns ``model``).

    What a QLoRA forward pass computes: the frozen base weight is stored in 4 bits and
    dequantised for each matmul; LoRA's ``A`` and ``B`` stay in full precision. This simulates
    the numbers (not the memory saving) on any device.
    """
    for name, m in model.named_modules():
        if name.rpartition(".")[2] in target_modules and hasattr(m, "weight"):
            m.weight.copy_(dequantize_nf4(quantize_nf4(m.weight, double_quant=double_quant)))
    return model


# ----------------------------------------------------------------------------------------------
# Command line: python -m rl4lmt.sft train | evaluate
# ----------------------------------------------------------------------------------------------
def _evaluate(model_name: str, n: int, seed: int) -> dict:
    from rl4lmt.zoo import load

    torch.set_num_threads(1)
    world = TinyReviews()
    held_out = instruction_pairs(n, seed=10_000 + seed)  # the training data uses seed 0
    instructions = [p for p, _ in held_out]
    ceiling = sum(world.instruction_score(p, r) for p, r in held_out) / n
    reviews = world.sample(1000, seed=20_000 + seed)
    out = {"n": n, "world_ceiling": ceiling, "world_cross_entropy": world.cross_entropy(reviews),
           "entropy_rate": world.entropy_rate()}
    for name in ("tiny-reviews", model_name):
        model, tok = load(name, device="cpu")
        ev = evaluate_instructions(model, tok, instructions, world=world, seed=seed)
        out[name] = {"score": ev["score"], "fraction_of_ceiling": ev["score"] / ceiling,
                     "grammatical": ev["grammatical"], "finished": ev["finished"],
                     "review_cross_entropy": review_cross_entropy(model, tok, reviews)}
    return out


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl4lmt.sft", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="rebuild the shipped tiny-reviews-sft model")
    p_train.add_argument("--out", default=None, help="output folder (default: the package's checkpoint)")
    for field, default in asdict(SFTRecipe()).items():
        p_train.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    p_eval = sub.add_parser("evaluate", help="instruction score, grammaticality and forgetting on held-out data")
    p_eval.add_argument("--model", default="tiny-reviews-sft", help="a shipped name or a checkpoint folder")
    p_eval.add_argument("--n", type=int, default=1000, help="held-out instructions")
    p_eval.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        cfg = SFTRecipe(**{f: getattr(args, f) for f in asdict(SFTRecipe())})
        report = train(args.out, cfg)
        print(json.dumps({k: v for k, v in report.items() if k != "loss_every_10"}, indent=1))
    else:
        print(json.dumps(_evaluate(args.model, args.n, args.seed), indent=1))


if __name__ == "__main__":
    _main()
