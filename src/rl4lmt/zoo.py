"""Shipped tiny models: ``load("tiny-reviews") -> (model, tokenizer)``.

The course runs offline on its own tiny GPT-2, pretrained on the TinyReviews world and shipped
inside the package (safetensors + config + tokenizer files, a few MB). Its word-level tokenizer
puts the world's vocabulary first, in order, so token id ``i < len(world.vocab)`` *is*
``world.vocab[i]`` and a model's next-token distribution lives in the same space as
``TinyReviews.next_word_probs``. Any other name (e.g. ``"gpt2"``) passes through to transformers'
``from_pretrained``, which needs the Hugging Face hub (or its local cache).

Rebuild the shipped model (same seed, same weights on the same machine)::

    python -m rl4lmt.zoo train            # or: make model

``"tiny-reviews-sft"`` is that model after supervised fine-tuning on the world's instructions
(chapter 5, RLHF's SFT policy), rebuilt by ``python -m rl4lmt.sft train`` (or ``make sft-model``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from rl4lmt.utils import get_device, set_seed
from rl4lmt.world import EOS, TinyReviews

__all__ = ["load", "build_tokenizer", "TinyGPTConfig", "train", "checkpoint_dir", "SHIPPED"]

PAD, UNK = "<pad>", "<unk>"
SHIPPED = ("tiny-reviews", "tiny-reviews-sft",  # causal LMs; "-sft": chapter 5's instruction-tuned model
           "tiny-reviews-ppo", "tiny-reviews-dpo")  # the SFT model after PPO-RLHF / DPO (rl4lmt.rlhf_models)
REWARD_MODELS = ("tiny-reviews-rm",)  # shipped GPT2ForSequenceClassification reward models (chapter 6)
PROCESS_REWARD_MODELS = ("tiny-reviews-prm",)  # GPT2ForTokenClassification: a score after every token (chapter 6)
_REBUILD = {"tiny-reviews-sft": "rl4lmt.sft train", "tiny-reviews-ppo": "rl4lmt.rlhf_models ppo",
            "tiny-reviews-dpo": "rl4lmt.rlhf_models dpo"}  # the command that rebuilds each checkpoint


def checkpoint_dir(name: str = "tiny-reviews") -> Path:
    """Where a shipped checkpoint lives inside the installed package."""
    return Path(str(resources.files("rl4lmt") / "checkpoints" / name))


def build_tokenizer(world: TinyReviews | None = None):
    """The course's word-level tokenizer as a transformers ``PreTrainedTokenizerFast``.

    Built with the ``tokenizers`` library: a ``WordLevel`` model over ``world.vocab`` (ids
    ``0..V-1`` in the world's order, ``<eos>`` = 0), then ``<pad>`` = V and ``<unk>`` = V + 1;
    whitespace pre-tokenisation (texts are space-separated tokens); a post-processor that
    prepends the BOS, which is ``<eos>`` as in GPT-2 (a review starts after an end of review).
    No EOS is appended: the end of a review is an event the model predicts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    world = world or TinyReviews()
    vocab = {w: i for i, w in enumerate(world.vocab)}
    vocab[PAD] = len(vocab)
    vocab[UNK] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, vocab[EOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word tokens with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="right", model_max_length=64,
    )


@dataclass
class TinyGPTConfig:
    """Size and training recipe of the shipped tiny GPT-2 (``python -m rl4lmt.zoo train``)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 64        # longest review is ~35 tokens; BOS and EOS included
    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100            # linear warm-up, then cosine decay to lr / 10
    weight_decay: float = 0.01
    n_train: int = 120_000       # reviews sampled from the world for training
    seed: int = 0
    threads: int = 1             # one thread: the same seed gives the same weights on any machine


def _gpt2_config(cfg: TinyGPTConfig, tokenizer):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # infinite fresh data: no dropout needed
    )


def train(out_dir: str | os.PathLike | None = None, cfg: TinyGPTConfig | None = None,
          progress: bool = True) -> dict:
    """Pretrain the tiny GPT-2 on world samples by teacher forcing and save it to ``out_dir``.

    AdamW on the next-token cross-entropy (``rl4lmt.lm.teacher_forcing_loss``), linear warm-up
    then cosine decay, batches drawn in a seeded order. Returns a report (losses, time, tokens/s)
    that is also written next to the weights as ``training.json``.
    """
    from transformers import GPT2LMHeadModel

    from rl4lmt.lm import encode_texts, train_teacher_forcing

    cfg = cfg or TinyGPTConfig()
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir()
    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    world = TinyReviews(seed=cfg.seed)
    tokenizer = build_tokenizer(world)
    texts = world.sample(cfg.n_train, seed=cfg.seed)
    input_ids, attention_mask = encode_texts(tokenizer, texts)
    model = GPT2LMHeadModel(_gpt2_config(cfg, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())

    # weight decay on matrices only (not on biases, LayerNorm gains, or position embeddings)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)  # the order of the batches
    tokens = 0

    def count_tokens(step, am, loss):  # predicted tokens, for the throughput in the report
        nonlocal tokens
        tokens += int(am[:, 1:].sum())

    t0 = time.perf_counter()
    # the package's one teacher-forcing loop, with this recipe's optimizer, schedule and clipping
    # (the clipping guards the early, large-lr steps)
    losses = train_teacher_forcing(
        model, input_ids, attention_mask, steps=cfg.steps, batch_size=cfg.batch_size, generator=gen,
        optimizer=opt, lr_schedule=lr_at, max_grad_norm=1.0, on_step=count_tokens,
        progress=progress, desc="pretraining tiny-reviews")
    seconds = time.perf_counter() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    report = {
        "config": asdict(cfg), "n_params": n_params, "seconds": round(seconds, 1),
        "train_tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
        "final_loss_avg100": sum(losses[-100:]) / min(100, len(losses)),
        "world_entropy_rate": world.entropy_rate(),
        "losses_every_10": [round(x, 4) for x in losses[::10]],
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1))
    return report


@contextlib.contextmanager
def _quiet_loading():
    """Silence transformers' progress bars while loading a small local checkpoint."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load(name: str = "tiny-reviews", device: torch.device | str | None = None):
    """Load ``(model, tokenizer)``: a shipped checkpoint by its name, or any hub name.

    ``"tiny-reviews"`` is the GPT-2 pretrained on the TinyReviews world that ships with the
    package (works offline), ``"tiny-reviews-sft"`` the same model instruction-tuned (chapter 5);
    ``"tiny-reviews-rm"`` is chapter 6's reward model, a
    ``GPT2ForSequenceClassification`` (one score per text, read at its last real token), and
    ``"tiny-reviews-prm"`` its process reward model, a ``GPT2ForTokenClassification`` (a score
    after every token: the probability that the response is on track so far). Other
    names go to transformers' ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` (a hub
    id or a local folder); offline, a name that is not in the local cache fails with an
    ``OSError`` that says what to do instead. The model is put in eval mode on ``device``
    (default: ``rl4lmt.get_device()``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    device = get_device() if device is None else torch.device(device)
    if name in REWARD_MODELS or name in PROCESS_REWARD_MODELS:  # a scalar head: (reward model, tokenizer)
        from transformers import GPT2ForSequenceClassification, GPT2ForTokenClassification, PreTrainedTokenizerFast

        process = name in PROCESS_REWARD_MODELS
        path = checkpoint_dir(name)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the shipped reward model {name!r} is missing from {path}; rebuild it with "
                f"`python -m rl4lmt.reward {'train-prm' if process else 'train'}` (or reinstall the package)")
        with _quiet_loading():
            model = (GPT2ForTokenClassification if process else GPT2ForSequenceClassification).from_pretrained(path)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    elif name in SHIPPED:
        from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

        path = checkpoint_dir(name)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the shipped checkpoint {name!r} is missing from {path}; rebuild it with "
                f"`python -m {_REBUILD.get(name, 'rl4lmt.zoo train')}` "
                "(or reinstall the package)")
        with _quiet_loading():  # no "Loading weights" bar on every book page
            model = GPT2LMHeadModel.from_pretrained(path)
        model.loss_type = "ForCausalLM"  # transformers 5 leaves it unset and warns on `labels=`
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name)
        except OSError as err:
            offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                          for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
            why = ("this session is offline (HF_HUB_OFFLINE=1) and the model is not in the local cache"
                   if offline else "the Hugging Face hub could not be reached or has no such model")
            raise OSError(
                f"could not load {name!r}: {why}. Offline, use the model that ships with the course, "
                f"rl4lmt.zoo.load('tiny-reviews'); online (e.g. on Colab), check the name, or download "
                f"it once with network access so that it is cached. Original error: {err}") from err
    return model.to(device).eval(), tokenizer


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl4lmt.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="rebuild the shipped tiny-reviews GPT-2 from the world")
    p_train.add_argument("--out", default=None, help="output folder (default: the package's checkpoint)")
    for field, default in asdict(TinyGPTConfig()).items():
        p_train.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.command == "train":
        cfg = TinyGPTConfig(**{f: getattr(args, f) for f in asdict(TinyGPTConfig())})
        report = train(args.out, cfg)
        print(json.dumps({k: v for k, v in report.items() if k != "losses_every_10"}, indent=1))


if __name__ == "__main__":
    _main()
