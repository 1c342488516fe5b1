"""The ch01-lm-basics tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation,
runs the task's test cell (visible and hidden tests), and checks the verdict. Like nbgrader,
which gives a test cell no points when it writes to stderr, a warning counts as a failure. The generic
pipeline checks (solution full marks, release scores nothing, no leaks) live in
tests/test_grading.py; this file is about *which* mistakes the hidden tests catch.
"""
from rl4lmt.grading.mutants import MutationSuite

# task -> the solution cells it needs before its own (tasks 6 and 7 build on tasks 4 and 5)
NEEDS = {"causal_self_attention": ["causal_mask", "attention"], "multi_head_self_attention": ["causal_mask", "attention"]}


def _mha(head="B, T, C = x.shape; d = C // n_heads", qkv="x @ w_qkv + (b_qkv if b_qkv is not None else 0)",
         split="t.view(B, T, n_heads, d).transpose(1, 2)", causal="torch.ones(T, T, dtype=torch.bool).tril()",
         combine="m & attn_mask", scale="math.sqrt(d)", softmax="s.softmax(-1)", merge="y.transpose(1, 2).reshape(B, T, C)",
         out="z @ w_out + (b_out if b_out is not None else 0)"):
    """A multi_head_self_attention body with one piece swapped (the defaults make a correct one)."""
    return (f"{head}\n    qkv = {qkv}\n    q, k, v = ({split} for t in qkv.split(C, -1))\n"
            f"    m = {causal}\n    if attn_mask is not None: m = {combine}\n"
            f"    s = (q @ k.transpose(-2, -1) / {scale}).masked_fill(~m, float('-inf'))\n"
            f"    y = {softmax} @ v\n    z = {merge}\n    return {out}")


WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "surprisal": {
        "natural log": "return -np.log(p)",
        "floats only (math.log2)": "return -math.log2(p)",
    },
    "perplexity": {
        "product of probabilities (underflows on long batches)": "m = mask.to(logp.dtype)\n    prob = torch.exp(logp * m).prod()\n    return float(prob ** (-1.0 / m.sum()))",
        "zeroes the padding of logp in place": "logp.mul_(mask.to(logp.dtype))\n    return float(torch.exp(-logp.sum() / mask.sum()))",
        "returns a tensor, not a float": "m = mask.to(logp.dtype)\n    return torch.exp(-(logp * m).sum() / m.sum())",
        "padding counted": "return float(torch.exp(-logp.mean()))",
        "mean of per-text means": "m = mask.to(logp.dtype)\n    return float(torch.exp((-(logp * m).sum(1) / m.sum(1)).mean()))",
        "base 2 with natural logs": "m = mask.to(logp.dtype)\n    return float(2 ** (-(logp * m).sum() / m.sum()))",
        "divided by all entries": "m = mask.to(logp.dtype)\n    return float(torch.exp(-(logp * m).sum() / m.numel()))",
    },
    "next_token_logprobs": {
        "log of a softmax (-inf on extreme logits)": "return torch.log(torch.softmax(logits[:, :-1], -1)).gather(-1, input_ids[:, 1:, None]).squeeze(-1)",
        "exp of unshifted logits (overflows)": "z = logits[:, :-1]\n    lse = torch.log(torch.exp(z).sum(-1, keepdim=True))\n    return (z - lse).gather(-1, input_ids[:, 1:, None]).squeeze(-1)",
        "no shift": "return torch.log_softmax(logits, -1)[:, :-1].gather(-1, input_ids[:, :-1, None]).squeeze(-1)",
        "shift the wrong way": "return torch.log_softmax(logits[:, 1:], -1).gather(-1, input_ids[:, :-1, None]).squeeze(-1)",
        "softmax, not log-softmax": "return torch.softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)",
        "batch 1 only": "lp = torch.log_softmax(logits[0, :-1], -1)\n    return lp[torch.arange(lp.shape[0]), input_ids[0, 1:]][None]",
    },
    "causal_mask": {
        "upper triangle": "return torch.ones(n, n, dtype=torch.bool).triu()",
        "diagonal left out": "return torch.ones(n, n, dtype=torch.bool).tril(-1)",
        "float 0/1 mask": "return torch.ones(n, n).tril()",
    },
    "attention": {
        "exp of unshifted scores (overflows)": "s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    e = torch.exp(s)\n    return (e / e.sum(-1, keepdim=True)) @ v",
        "scales q in place": "q.div_(math.sqrt(q.shape[-1]))\n    s = q @ k.transpose(-2, -1)\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
        "no 1/sqrt(d)": "s = q @ k.transpose(-2, -1)\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
        "1/d instead of 1/sqrt(d)": "s = q @ k.transpose(-2, -1) / q.shape[-1]\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
        "sqrt of the value dim": "s = q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
        "softmax over queries": "s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-2) @ v",
        "mask inverted": "s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    if attn_mask is not None: s = s.masked_fill(attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
        "mask applied after the softmax": "w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)\n    if attn_mask is not None: w = w * attn_mask\n    return w @ v",
        "transpose(1, 2) (4-D batch-first only)": "s = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])\n    if attn_mask is not None: s = s.masked_fill(~attn_mask, float('-inf'))\n    return s.softmax(-1) @ v",
    },
    "causal_self_attention": {
        "padding hides queries, not keys": "mask = causal_mask(q.shape[-2])\n    if attention_mask is not None: mask = mask & attention_mask.bool()[:, None, :, None]\n    return attention(q, k, v, mask)",
        "padding mask ignored": "return attention(q, k, v, causal_mask(q.shape[-2]))",
        "padding mask replaces the causal one": "mask = causal_mask(q.shape[-2])\n    if attention_mask is not None: mask = attention_mask.bool()[:, None, None, :]\n    return attention(q, k, v, mask)",
        "first text's mask for the batch": "mask = causal_mask(q.shape[-2])\n    if attention_mask is not None: mask = mask & attention_mask[0].bool()\n    return attention(q, k, v, mask)",
    },
    "sinusoidal_positions": {
        "sines and cosines in two halves": "t = torch.arange(n_positions)[:, None].float(); w = 10000 ** (-torch.arange(0, dim, 2).float() / dim)\n    return torch.cat([torch.sin(t * w), torch.cos(t * w)], -1)",
        "exponent k/d instead of 2k/d": "t = torch.arange(n_positions)[:, None].float(); w = 10000 ** (-torch.arange(dim // 2).float() / dim)\n    pe = torch.zeros(n_positions, dim); pe[:, 0::2] = torch.sin(t * w); pe[:, 1::2] = torch.cos(t * w); return pe",
        "sine and cosine swapped": "t = torch.arange(n_positions)[:, None].float(); w = 10000 ** (-torch.arange(0, dim, 2).float() / dim)\n    pe = torch.zeros(n_positions, dim); pe[:, 0::2] = torch.cos(t * w); pe[:, 1::2] = torch.sin(t * w); return pe",
        "positions counted from 1": "t = torch.arange(1, n_positions + 1)[:, None].float(); w = 10000 ** (-torch.arange(0, dim, 2).float() / dim)\n    pe = torch.zeros(n_positions, dim); pe[:, 0::2] = torch.sin(t * w); pe[:, 1::2] = torch.cos(t * w); return pe",
    },
    "multi_head_self_attention": {
        "heads split by reshape without the transpose (mixes positions and heads)":
            _mha(split="t.reshape(B, n_heads, T, d)", merge="y.reshape(B, T, C)"),
        "scaled by sqrt(C), not sqrt(d_head)": _mha(scale="math.sqrt(C)"),
        "no causal mask": _mha(causal="torch.ones(T, T, dtype=torch.bool)"),
        "causal mask off by one (diagonal hidden)": _mha(causal="torch.ones(T, T, dtype=torch.bool).tril(-1)"),
        "causal mask off by one (next token visible)": _mha(causal="torch.ones(T, T, dtype=torch.bool).tril(1)"),
        "softmax over the queries": _mha(softmax="s.softmax(-2)"),
        "heads merged without the transpose back": _mha(merge="y.reshape(B, T, C)"),
        "heads concatenated feature-major (d_head, heads)": _mha(merge="y.permute(0, 2, 3, 1).reshape(B, T, C)"),
        "Q, K, V interleaved per head (another library's layout)":
            "B, T, C = x.shape; d = C // n_heads\n    qkv = x @ w_qkv + (b_qkv if b_qkv is not None else 0)\n"
            "    q, k, v = qkv.view(B, T, n_heads, 3 * d).transpose(1, 2).chunk(3, -1)\n"
            "    m = causal_mask(T)\n    if attn_mask is not None: m = m & attn_mask\n"
            "    return attention(q, k, v, m).transpose(1, 2).reshape(B, T, C) @ w_out + (b_out if b_out is not None else 0)",
        "output projection missing": _mha(out="z"),
        "output projection transposed": _mha(out="z @ w_out.T + (b_out if b_out is not None else 0)"),
        "output bias left out": _mha(out="z @ w_out"),
        "attn_mask ignored": _mha(combine="m"),
        "biases required (None breaks)": _mha(qkv="x @ w_qkv + b_qkv", out="z @ w_out + b_out"),
        "folds 1/sqrt(d_head) into the caller's w_qkv in place":
            _mha(head="B, T, C = x.shape; d = C // n_heads; w_qkv[:, :2 * C] *= d ** -0.25\n"
                      "    if b_qkv is not None: b_qkv[:2 * C] *= d ** -0.25", scale="1.0"),
        "squeeze() on the heads' outputs (breaks with one head)":
            _mha(merge="torch.cat(y.squeeze().unbind(-3), -1).reshape(B, T, C)"),
        "float32 buffer for the heads (float64 comes back float32)":
            "B, T, C = x.shape; d = C // n_heads\n    qkv = x @ w_qkv + (b_qkv if b_qkv is not None else 0)\n"
            "    m = causal_mask(T)\n    if attn_mask is not None: m = m & attn_mask\n    z = torch.zeros(B, T, C)\n"
            "    for h in range(n_heads):\n        sl = slice(h * d, (h + 1) * d)\n"
            "        q, k, v = (qkv[:, None, :, i * C:(i + 1) * C][..., sl] for i in range(3))\n"
            "        z[:, :, sl] = attention(q, k, v, m)[:, 0]\n"
            "    return z @ w_out.to(z.dtype) + (b_out.to(z.dtype) if b_out is not None else 0)",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "surprisal": {"np.log2": "return -np.log2(p)", "loop": "return np.array([-math.log2(x) if x > 0 else math.inf for x in np.ravel(p)]).reshape(np.shape(p)) if np.ndim(p) else (-math.log2(p) if p > 0 else math.inf)"},
    "perplexity": {"double loop": "tot, n = 0.0, 0\n    for b in range(logp.shape[0]):\n        for t in range(logp.shape[1]):\n            if mask[b, t]:\n                tot -= float(logp[b, t]); n += 1\n    return math.exp(tot / n)"},
    "next_token_logprobs": {"loop over positions": "B, T = input_ids.shape\n    out = torch.zeros(B, T - 1)\n    for b in range(B):\n        for t in range(T - 1):\n            out[b, t] = logits[b, t].log_softmax(-1)[input_ids[b, t + 1]]\n    return out"},
    "causal_mask": {"list comprehension": "return torch.tensor([[j <= i for j in range(n)] for i in range(n)], dtype=torch.bool)"},
    "attention": {
        "additive -1e9 instead of -inf": "s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    if attn_mask is not None: s = s + (~attn_mask) * -1e9\n    return s.softmax(-1) @ v",
        "hand-written stable softmax": "s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5\n    if attn_mask is not None: s = torch.where(attn_mask, s, torch.tensor(float('-inf')))\n    e = torch.exp(s - s.amax(-1, keepdim=True))\n    return (e / e.sum(-1, keepdim=True)) @ v",
    },
    "causal_self_attention": {"loop over the batch": "outs = []\n    for b in range(q.shape[0]):\n        m = causal_mask(q.shape[-2])\n        if attention_mask is not None: m = m & attention_mask[b].bool()[None, :]\n        outs.append(attention(q[b], k[b], v[b], m))\n    return torch.stack(outs)"},
    "multi_head_self_attention": {
        "the table's template, unswapped": _mha(),
        "the course package": "return lm.multi_head_self_attention(x, w_qkv, b_qkv, w_out, b_out, n_heads, attn_mask)",
        "einsum with heads on axis 2":
            "B, T, C = x.shape; d = C // n_heads\n    qkv = torch.einsum('btc,cf->btf', x, w_qkv)\n"
            "    if b_qkv is not None: qkv = qkv + b_qkv\n    q, k, v = (t.reshape(B, T, n_heads, d) for t in qkv.split(C, -1))\n"
            "    s = torch.einsum('bqhd,bkhd->bhqk', q, k) / d ** 0.5\n"
            "    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()\n"
            "    if attn_mask is not None: allowed = allowed & attn_mask\n"
            "    y = torch.einsum('bhqk,bkhd->bqhd', s.masked_fill(~allowed, float('-inf')).softmax(-1), v).reshape(B, T, C)\n"
            "    y = y @ w_out\n    return y if b_out is None else y + b_out",
        "a loop over heads with your attention, into a buffer of x's dtype":
            "B, T, C = x.shape; d = C // n_heads\n    qkv = x @ w_qkv + (b_qkv if b_qkv is not None else 0)\n"
            "    m = causal_mask(T)\n    if attn_mask is not None: m = m & attn_mask\n    z = x.new_zeros(B, T, C)\n"
            "    for h in range(n_heads):\n        sl = slice(h * d, (h + 1) * d)\n"
            "        q, k, v = (qkv[:, None, :, i * C:(i + 1) * C][..., sl] for i in range(3))\n"
            "        z[:, :, sl] = attention(q, k, v, m[:, :1] if m.dim() == 4 else m)[:, 0]\n"
            "    return z @ w_out + (b_out if b_out is not None else 0)",
        "torch.nn.MultiheadAttention built from the weights":
            "B, T, C = x.shape\n    mha = torch.nn.MultiheadAttention(C, n_heads, batch_first=True, bias=b_qkv is not None,\n"
            "                                      device=x.device, dtype=x.dtype).eval()\n"
            "    with torch.no_grad():\n        mha.in_proj_weight.copy_(w_qkv.T); mha.out_proj.weight.copy_(w_out.T)\n"
            "        if b_qkv is not None: mha.in_proj_bias.copy_(b_qkv); mha.out_proj.bias.copy_(b_out)\n"
            "    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()\n"
            "    if attn_mask is not None: allowed = (allowed & attn_mask).expand(B, n_heads, T, T).reshape(B * n_heads, T, T)\n"
            "    return mha(x, x, x, attn_mask=~allowed, need_weights=False)[0]",
    },
    "sinusoidal_positions": {"vectorised, exp-log frequencies": "t = torch.arange(n_positions)[:, None].double(); w = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2).double() / dim)\n    pe = torch.zeros(n_positions, dim); pe[:, 0::2] = torch.sin(t * w); pe[:, 1::2] = torch.cos(t * w); return pe"},
}


SUITE = MutationSuite("ch01-lm-basics", WRONG, RIGHT, base=["imports"], needs=NEEDS)
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
