"""The ch02-decoding tests grade behaviour: plausible mistakes fail, other correct solutions pass.

A table for the shared harness (rl4lmt.grading.mutants): each WRONG body must fail the task's test
cell (visible + hidden tests), each RIGHT body (another correct way) must pass. The generic
pipeline checks live in tests/test_assignments.py.
"""
from rl4lmt.grading.mutants import MutationSuite

_TOPP_HEAD = "if not 0 < p <= 1:\n        raise ValueError(f'p must be in (0, 1], got {p}')\n    "

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "temperature_scale": {
        "multiplies by t": "if not t > 0:\n        raise ValueError(f't must be > 0, got {t}')\n    return logits * t",
        "no check of t": "return logits / t",
        "rejects only t == 0": "if t == 0:\n        raise ValueError('t must be > 0')\n    return logits / t",
        "returns probabilities": "if not t > 0:\n        raise ValueError(f't must be > 0, got {t}')\n    return torch.softmax(logits / t, -1)",
    },
    "top_k_filter": {
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
}

SUITE = MutationSuite("ch02-decoding", WRONG, RIGHT, base=["setup", "imports"],
                      needs={"sample": ["temperature_scale", "top_k_filter", "top_p_filter"], "beam_search": ["pad_rows"]})
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
