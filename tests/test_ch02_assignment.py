"""The ch02-decoding tests grade behaviour: plausible mistakes fail, other correct solutions pass.

A table for the shared harness (rl4lmt.grading.mutants): each WRONG body must fail the task's test
cell (visible + hidden tests), each RIGHT body (another correct way) must pass. The generic
pipeline checks live in tests/test_assignments.py.
"""
from rl4lmt.grading.mutants import Edit, MutationSuite

_TOPP_HEAD = "if not 0 < p <= 1:\n        raise ValueError(f'p must be in (0, 1], got {p}')\n    "

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "temperature_scale": {
        "divides in place": "if not t > 0:\n        raise ValueError(f't must be > 0, got {t}')\n    logits /= t\n    return logits",
        "multiplies by t": "if not t > 0:\n        raise ValueError(f't must be > 0, got {t}')\n    return logits * t",
        "no check of t": "return logits / t",
        "rejects only t == 0": "if t == 0:\n        raise ValueError('t must be > 0')\n    return logits / t",
        "returns probabilities": "if not t > 0:\n        raise ValueError(f't must be > 0, got {t}')\n    return torch.softmax(logits / t, -1)",
    },
    "top_k_filter": {
        "filters in place":
            "if k < 1:\n        raise ValueError(f'k must be >= 1, got {k}')\n    k = min(k, logits.shape[-1])\n"
            "    kth = torch.topk(logits, k, dim=-1).values[..., -1:]\n    return logits.masked_fill_(logits < kth, float('-inf'))",
        "exactly k tokens (ties with the k-th dropped)":
            "if k < 1:\n        raise ValueError(f'k must be >= 1, got {k}')\n    k = min(k, logits.shape[-1])\n"
            "    idx = torch.topk(logits, k, dim=-1).indices\n    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)\n"
            "    return logits.masked_fill(~keep, float('-inf'))",
        "k not capped at the vocabulary":
            "if k < 1:\n        raise ValueError(f'k must be >= 1, got {k}')\n    kth = torch.topk(logits, k, dim=-1).values[..., -1:]\n"
            "    return logits.masked_fill(logits < kth, float('-inf'))",
        "one threshold for the whole batch":
            "if k < 1:\n        raise ValueError(f'k must be >= 1, got {k}')\n    k = min(k, logits.shape[-1])\n"
            "    kth = torch.topk(logits.flatten(), k).values[-1]\n    return logits.masked_fill(logits < kth, float('-inf'))",
        "-1e9 instead of -inf":
            "if k < 1:\n        raise ValueError(f'k must be >= 1, got {k}')\n    k = min(k, logits.shape[-1])\n"
            "    kth = torch.topk(logits, k, dim=-1).values[..., -1:]\n    return logits.masked_fill(logits < kth, -1e9)",
    },
    "top_p_filter": {
        "filters in place": Edit(("return logits.masked_fill(outside, -math.inf)", "return logits.masked_fill_(outside, -math.inf)")),
        "running sum minus own probability (float32: p = 1 drops the tail of peaky logits)":
            _TOPP_HEAD + "probs, order = torch.sort(logits.softmax(dim=-1), dim=-1, descending=True)\n"
            "    before = probs.cumsum(dim=-1) - probs\n    drop = before >= p\n"
            "    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)",
        "descending cumsum > p, shifted (old transformers; float32 overshoots 1 at p = 1)":
            _TOPP_HEAD + "s, order = torch.sort(logits, dim=-1, descending=True)\n    c = s.softmax(-1).cumsum(-1)\n"
            "    drop = c > p\n    drop[..., 1:] = drop[..., :-1].clone()\n    drop[..., 0] = False\n"
            "    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)",
        "one token fewer (drops the token that reaches p)":
            _TOPP_HEAD + "probs, order = torch.sort(logits.softmax(dim=-1), dim=-1, descending=True)\n"
            "    drop = probs.cumsum(-1) >= p\n    drop[..., 0] = False\n"
            "    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)",
        "sorted over the whole batch":
            _TOPP_HEAD + "flat = logits.softmax(-1).flatten()\n    probs, order = torch.sort(flat, descending=True)\n"
            "    before = torch.cat([probs.new_zeros(1), probs.cumsum(0)[:-1]]) / logits.reshape(-1, logits.shape[-1]).shape[0]\n"
            "    drop = before >= p\n    return logits.masked_fill(drop.scatter(0, order, drop).reshape(logits.shape), -math.inf)",
    },
    "greedy": {
        "stops when ANY row has ended": Edit(("if has_eos and finished.all():", "if has_eos and finished.any():")),
        "no padding after EOS": Edit(("                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)\n", "")),
        "pads with EOS (pad_token_id ignored)": Edit(("pad_token_id = eos_token_id if pad_token_id is None else pad_token_id", "pad_token_id = eos_token_id")),
        "never stops early": Edit(("            if has_eos and finished.all():\n                break\n", "")),
        "logits of the first position": Edit(("nxt = out.logits[:, -1].argmax(dim=-1)", "nxt = out.logits[:, 0].argmax(dim=-1)")),
    },
    "sample": {
        "ignores the generator": Edit(("num_samples=1, generator=generator)", "num_samples=1)")),
        "a fixed generator of its own": Edit(("num_samples=1, generator=generator)", "num_samples=1, generator=torch.Generator(z.device).manual_seed(0))")),
        "top-p before top-k": Edit(("            if top_k is not None:\n                z = top_k_filter(z, top_k)\n            if top_p is not None:\n                z = top_p_filter(z, top_p)\n",
                                    "            if top_p is not None:\n                z = top_p_filter(z, top_p)\n            if top_k is not None:\n                z = top_k_filter(z, top_k)\n")),
        "temperature after the filters": Edit(("z = temperature_scale(out.logits[:, -1].float(), temperature)", "z = out.logits[:, -1].float()"),
                                              ("            nxt = torch.multinomial(z.softmax(dim=-1)", "            z = temperature_scale(z, temperature)\n            nxt = torch.multinomial(z.softmax(dim=-1)")),
        "no padding after EOS": Edit(("                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)\n", "")),
    },
    "beam_search": {
        "length penalty counts the prompt": Edit(("score / (step + 1) ** length_penalty", "score / (P + step + 1) ** length_penalty")),
        "no length normalisation": Edit(("score / (step + 1) ** length_penalty", "score")),
        "EOS candidates below the top K finish too": Edit(("if rank < K:", "if True:")),
        "K candidates per step (not 2K)": Edit(("topk(2 * K)", "topk(K)")),
        "stops at the first finished hypothesis": Edit(("if len(finished) == K:", "if len(finished) >= 1:")),
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "temperature_scale": {
        "multiply by 1/t": "if t <= 0:\n        raise ValueError('temperature t must be positive')\n    return logits * (1.0 / t)",
    },
    "top_k_filter": {
        "sort and compare": "if k <= 0:\n        raise ValueError('k must be positive')\n    s = logits.sort(-1, descending=True).values\n"
                            "    kth = s[..., min(k, s.shape[-1]) - 1 : min(k, s.shape[-1])]\n    return torch.where(logits >= kth, logits, torch.full_like(logits, -math.inf))",
    },
    "top_p_filter": {
        "transformers' way (ascending tail)":
            _TOPP_HEAD + "s, order = torch.sort(logits, dim=-1)\n    tail = s.softmax(-1).cumsum(-1)\n    drop = tail <= 1 - p\n"
            "    drop[..., -1] = False\n    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)",
        "p = 1 short-cut, then descending running sums":
            _TOPP_HEAD + "if p == 1:\n        return logits.clone()\n    probs, order = torch.sort(logits.softmax(dim=-1), dim=-1, descending=True)\n"
            "    before = torch.cat([torch.zeros_like(probs[..., :1]), probs.cumsum(-1)[..., :-1]], -1)\n    drop = before >= p\n"
            "    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)",
        "row by row in float64, from the least probable token":
            _TOPP_HEAD + "flat = logits.reshape(-1, logits.shape[-1])\n    out = flat.clone()\n    for r in range(flat.shape[0]):\n"
            "        probs = flat[r].double().softmax(-1)\n        tail = 0.0\n        for i in torch.argsort(probs).tolist()[:-1]:\n"
            "            tail += probs[i].item()\n            if tail > 1 - p:\n                break\n            out[r, i] = -math.inf\n"
            "    return out.reshape(logits.shape)",
    },
    "greedy": {
        "no cache: the whole sequence every step":
            "pad = eos_token_id if pad_token_id is None else pad_token_id\n    out = input_ids.clone()\n    done = torch.zeros(len(out), dtype=torch.bool, device=out.device)\n"
            "    for _ in range(max_new_tokens):\n        with torch.no_grad():\n            nxt = model(out).logits[:, -1].argmax(-1)\n"
            "        if eos_token_id is not None:\n            nxt[done] = pad\n            done = done | (nxt == eos_token_id)\n"
            "        out = torch.cat([out, nxt[:, None]], 1)\n        if eos_token_id is not None and bool(done.all()):\n            break\n    return out",
        "exact ties go to the LAST token": Edit(("nxt = out.logits[:, -1].argmax(dim=-1)", "z = out.logits[:, -1]\n            nxt = z.shape[-1] - 1 - z.flip(-1).argmax(dim=-1)")),
    },
    "sample": {
        "Gumbel-max with the generator's uniforms": Edit(("nxt = torch.multinomial(z.softmax(dim=-1), num_samples=1, generator=generator).squeeze(1)",
                                                           "u = torch.rand(z.shape, generator=generator, device=z.device).clamp_min(1e-20)\n"
                                                           "            nxt = (z.log_softmax(-1) - torch.log(-torch.log(u))).argmax(-1)")),
    },
    "beam_search": {
        "scores in float64": Edit((".logits[:, -1].float()", ".logits[:, -1].double()")),
    },
}

SUITE = MutationSuite("ch02-decoding", WRONG, RIGHT, base=["setup", "imports"],
                      needs={"sample": ["temperature_scale", "top_k_filter", "top_p_filter"], "beam_search": ["pad_rows"]})
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
