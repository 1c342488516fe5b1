"""Training throughput of the tiny GPT-2 beside the machine's matmul roofline.

    .venv/bin/python benchmarks/train_throughput.py [--threads 1] [--steps 30]

Prints (and writes to benchmarks/results/train_throughput.json): the peak float32 matmul rate
measured on this machine (a 1024x1024 @ 1024x1024 product, the 'roofline' a dense model could
reach), the training rate in tokens/s of the shipped recipe, and the achieved rate as
6 N FLOPs per token (forward + backward, N = parameters outside the embeddings; the usual
Kaplan et al. estimate) as a share of the roofline.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from rl4lmt.lm import encode_texts, teacher_forcing_loss
from rl4lmt.world import TinyReviews
from rl4lmt.zoo import TinyGPTConfig, _gpt2_config, build_tokenizer


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=TinyGPTConfig().threads)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TinyGPTConfig()
    world = TinyReviews(0)
    tok = build_tokenizer(world)
    ids, am = encode_texts(tok, world.sample(cfg.batch_size * 8, seed=0))
    model = GPT2LMHeadModel(_gpt2_config(cfg, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    n_params = sum(p.numel() for p in model.parameters())
    n_non_emb = n_params - model.transformer.wte.weight.numel() - model.transformer.wpe.weight.numel()
    tokens, elapsed = 0, 0.0
    for step in range(args.steps + 3):
        i = (step % 8) * cfg.batch_size
        b_ids, b_am = ids[i:i + cfg.batch_size], am[i:i + cfg.batch_size]
        w = int(b_am.sum(1).max())
        b_ids, b_am = b_ids[:, :w], b_am[:, :w]
        t = time.perf_counter()
        loss = teacher_forcing_loss(model(input_ids=b_ids, attention_mask=b_am).logits, b_ids, b_am)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 3:  # warm-up steps excluded
            elapsed += time.perf_counter() - t
            tokens += int(b_am[:, 1:].sum())
    tps = tokens / elapsed
    roof = matmul_gflops()
    achieved = 6 * n_non_emb * tps / 1e9
    res = {"threads": args.threads, "params": n_params, "non_embedding_params": n_non_emb,
           "tokens_per_s": round(tps), "achieved_gflops_6N": round(achieved, 2),
           "matmul_roofline_gflops": round(roof, 1), "share_of_roofline": round(achieved / roof, 3),
           "steps_measured": args.steps, "load_average": list(map(float, open("/proc/loadavg").read().split()[:3]))}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
