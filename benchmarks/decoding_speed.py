"""Speed of rl4lmt.decoding's samplers against transformers' generate, in generated tokens per second.

    .venv/bin/python benchmarks/decoding_speed.py [--model tiny-reviews] [--threads 1] [--new 32] [--reps 5]

For each decoder (greedy, sampling with top-k/top-p, beam search with 4 beams) and batch size
(1 and 16) both implementations decode the same prompts (the BOS alone) for exactly ``--new``
tokens (no EOS, so both do the same work); the table gives the median tokens/s over ``--reps``
runs and the ratio ours / generate (the issue's target: >= 0.8). Results go to
benchmarks/results/decoding_speed.json. Numbers from a machine shared with other jobs are noisy:
rerun on a quiet machine before quoting them.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rl4lmt import decoding, zoo


def tokens_per_second(fn, n_tokens: int, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_tokens / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-reviews")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = zoo.load(args.model, device="cpu")
    pad = tok.pad_token_id

    def generate(x, **kw):  # eos_token_id=None as a keyword: every sequence runs to the budget
        # (a GenerationConfig with eos_token_id=None would fall back to the model's EOS and stop early)
        return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new, eos_token_id=None,
                              pad_token_id=pad, **kw)

    cases = {
        "greedy": (lambda x: decoding.greedy(model, x, args.new),
                   lambda x: generate(x, do_sample=False)),
        "sample t=0.8 k=20 p=0.9": (
            lambda x: decoding.sample(model, x, args.new, temperature=0.8, top_k=20, top_p=0.9),
            lambda x: generate(x, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)),
        "beam 4": (lambda x: decoding.beam_search(model, x, 4, args.new),
                   lambda x: generate(x, do_sample=False, num_beams=4, early_stopping=True)),
    }
    rows = []
    print(f"{'decoder':<26}{'batch':>6}{'ours tok/s':>12}{'generate tok/s':>16}{'ratio':>8}")
    for name, (ours, theirs) in cases.items():
        for batch in (1, 16):
            x = torch.full((batch, 1), tok.bos_token_id, dtype=torch.long)
            assert ours(x).shape[1] == theirs(x).shape[1] == 1 + args.new, "both must do the same work"
            n = batch * args.new
            a = tokens_per_second(lambda ours=ours, x=x: ours(x), n, args.reps)
            b = tokens_per_second(lambda theirs=theirs, x=x: theirs(x), n, args.reps)
            rows.append({"decoder": name, "batch": batch, "ours_tokens_per_s": round(a, 1),
                         "generate_tokens_per_s": round(b, 1), "ratio": round(a / b, 3)})
            print(f"{name:<26}{batch:>6}{a:>12.0f}{b:>16.0f}{a / b:>8.2f}")
    out = Path(__file__).parent / "results" / "decoding_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "threads": args.threads, "new_tokens": args.new,
                               "reps": args.reps, "torch": torch.__version__, "machine": platform.machine(),
                               "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
