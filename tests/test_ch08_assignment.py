"""The ch08-calibration tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation, runs
the task's test cell (visible and hidden tests), and checks the verdict (the shared harness
rl4lmt.grading.mutants). The brief's list of mistakes: bins that drop the edge value 1.0, an
unweighted mean over bins, accuracy and confidence from different tokens, a temperature fitted on
the evaluation data or applied after the softmax, IQM as a median or over the wrong slice, a
bootstrap that does not resample per task.
"""
from rl4lmt.grading.mutants import MutationSuite

_ECE_HEAD = (
    "conf = np.asarray(confidences, dtype=float).ravel()\n    hit = np.asarray(correct, dtype=float).ravel()\n"
)

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "ece": {
        "drops the edge value 1.0 (bins only up to index n_bins - 1)":
            _ECE_HEAD + "    idx = np.floor(conf * n_bins).astype(int)\n    total = 0.0\n"
            "    for b in range(n_bins):\n        m = idx == b\n        if m.any():\n"
            "            total += m.sum() * abs(hit[m].mean() - conf[m].mean())\n    return float(total / len(conf))",
        "drops the edge value 1.0 and renormalises over what is left":
            _ECE_HEAD + "    idx = np.floor(conf * n_bins).astype(int)\n    keep = idx < n_bins\n    total = 0.0\n"
            "    for b in range(n_bins):\n        m = idx == b\n        if m.any():\n"
            "            total += m.sum() * abs(hit[m].mean() - conf[m].mean())\n    return float(total / keep.sum())",
        "unweighted mean over the non-empty bins":
            _ECE_HEAD + "    idx = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)\n    gaps = []\n"
            "    for b in range(n_bins):\n        m = idx == b\n        if m.any():\n"
            "            gaps.append(abs(hit[m].mean() - conf[m].mean()))\n    return float(np.mean(gaps))",
        "signed gaps (no absolute value)":
            _ECE_HEAD + "    idx = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)\n    total = 0.0\n"
            "    for b in range(n_bins):\n        m = idx == b\n        if m.any():\n"
            "            total += m.sum() * (conf[m].mean() - hit[m].mean())\n    return float(total / len(conf))",
        "no binning (mean per-prediction gap)": _ECE_HEAD + "    return float(np.mean(np.abs(conf - hit)))",
        "one bin whatever n_bins": _ECE_HEAD + "    return float(abs(conf.mean() - hit.mean()))",
    },
    "top_label_ece": {
        "confidence of the label, correctness of the argmax (different tokens)":
            "P = np.asarray(probs, dtype=float)\n    y = np.asarray(labels)\n"
            "    return ece(P[np.arange(len(P)), y], (P.argmax(1) == y).astype(float), n_bins)",
        "confidence of the label, always counted right":
            "P = np.asarray(probs, dtype=float)\n    y = np.asarray(labels)\n"
            "    return ece(P[np.arange(len(P)), y], np.ones(len(P)), n_bins)",
        "confidence of the runner-up class":
            "P = np.asarray(probs, dtype=float)\n    y = np.asarray(labels)\n"
            "    order = np.argsort(P, axis=1)\n    return ece(P[np.arange(len(P)), order[:, -2]], (order[:, -1] == y).astype(float), n_bins)",
    },
    "fit_temperature": {
        "temperature applied after the softmax":
            "z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    grid = torch.exp(torch.linspace(np.log(0.05), np.log(20), 4000, dtype=torch.float64))\n"
            "    p = torch.softmax(z, -1)\n"
            "    losses = [float(-torch.log(p[torch.arange(len(y)), y] / t).mean()) for t in grid]\n"
            "    return float(grid[int(np.argmin(losses))])",
        "logits multiplied by T":
            "z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    grid = torch.exp(torch.linspace(np.log(0.05), np.log(20), 4000, dtype=torch.float64))\n"
            "    losses = [float(torch.nn.functional.cross_entropy(z * t, y)) for t in grid]\n"
            "    return float(grid[int(np.argmin(losses))])",
        "grid too coarse (steps of 0.25)":
            "z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    grid = np.arange(0.25, 20, 0.25)\n"
            "    losses = [float(torch.nn.functional.cross_entropy(z / t, y)) for t in grid]\n"
            "    return float(grid[int(np.argmin(losses))])",
    },
    "calibration_report": {
        "temperature fitted on the evaluation (test) split":
            "T = fit_temperature(test_logits, test_labels)\n    z = torch.as_tensor(test_logits).double()\n"
            "    q = torch.softmax(z / T, -1)\n"
            "    return {'T': T, 'test_probs': q, 'ece_before': top_label_ece(torch.softmax(z, -1), test_labels, n_bins),\n"
            "            'ece_after': top_label_ece(q, test_labels, n_bins)}",
        "temperature fitted on both splits together":
            "T = fit_temperature(torch.cat([torch.as_tensor(val_logits), torch.as_tensor(test_logits)]),\n"
            "                        torch.cat([torch.as_tensor(val_labels), torch.as_tensor(test_labels)]))\n"
            "    z = torch.as_tensor(test_logits).double()\n    q = torch.softmax(z / T, -1)\n"
            "    return {'T': T, 'test_probs': q, 'ece_before': top_label_ece(torch.softmax(z, -1), test_labels, n_bins),\n"
            "            'ece_after': top_label_ece(q, test_labels, n_bins)}",
        "temperature applied after the softmax":
            "T = fit_temperature(val_logits, val_labels)\n    z = torch.as_tensor(test_logits).double()\n"
            "    q = torch.softmax(torch.softmax(z, -1) / T, -1)\n"
            "    return {'T': T, 'test_probs': q, 'ece_before': top_label_ece(torch.softmax(z, -1), test_labels, n_bins),\n"
            "            'ece_after': top_label_ece(q, test_labels, n_bins)}",
        "before and after swapped":
            "T = fit_temperature(val_logits, val_labels)\n    z = torch.as_tensor(test_logits).double()\n"
            "    q = torch.softmax(z / T, -1)\n"
            "    return {'T': T, 'test_probs': q, 'ece_after': top_label_ece(torch.softmax(z, -1), test_labels, n_bins),\n"
            "            'ece_before': top_label_ece(q, test_labels, n_bins)}",
    },
    "iqm": {
        "the median": "return float(np.median(np.asarray(scores, dtype=float)))",
        "the mean": "return float(np.mean(np.asarray(scores, dtype=float)))",
        "middle slice of the unsorted scores":
            "x = np.asarray(scores, dtype=float).ravel()\n    k = len(x) // 4\n    return float(x[k:len(x) - k].mean())",
        "IQM per task, then the mean over tasks":
            "x = np.asarray(scores, dtype=float)\n    x = x[:, None] if x.ndim == 1 else x\n"
            "    cols = []\n    for t in range(x.shape[1]):\n        c = np.sort(x[:, t])\n        k = len(c) // 4\n"
            "        cols.append(c[k:len(c) - k].mean())\n    return float(np.mean(cols))",
        "rounds the cut up (ceil(N/4))":
            "x = np.sort(np.asarray(scores, dtype=float).ravel())\n    k = int(np.ceil(len(x) / 4))\n"
            "    return float(x[k:len(x) - k].mean())",
        "keeps the outer halves (drops the middle)":
            "x = np.sort(np.asarray(scores, dtype=float).ravel())\n    k = len(x) // 4\n"
            "    return float(np.concatenate([x[:k], x[len(x) - k:]]).mean())",
    },
    "stratified_bootstrap": {
        "pools every task's runs (not per task)":
            "x = np.asarray(scores, dtype=float)\n    rng = np.random.default_rng(seed)\n    flat = x.ravel()\n"
            "    reps_ = [statistic(flat[rng.integers(0, flat.size, size=x.shape)]) for _ in range(reps)]\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
        "the same run indices for every task (whole rows)":
            "x = np.asarray(scores, dtype=float)\n    rng = np.random.default_rng(seed)\n"
            "    reps_ = [statistic(x[rng.integers(0, x.shape[0], size=x.shape[0])]) for _ in range(reps)]\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
        "resamples tasks instead of runs":
            "x = np.asarray(scores, dtype=float)\n    rng = np.random.default_rng(seed)\n"
            "    reps_ = [statistic(x[:, rng.integers(0, x.shape[1], size=x.shape[1])]) for _ in range(reps)]\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
        "without replacement (a permutation per task)":
            "x = np.asarray(scores, dtype=float)\n    rng = np.random.default_rng(seed)\n    reps_ = []\n"
            "    for _ in range(reps):\n        r = np.empty_like(x)\n        for t in range(x.shape[1]):\n"
            "            r[:, t] = x[rng.permutation(x.shape[0]), t]\n        reps_.append(statistic(r))\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
        "point estimate = mean of the replicates":
            "x = np.asarray(scores, dtype=float)\n    rng = np.random.default_rng(seed)\n"
            "    cols = np.arange(x.shape[1])[None, :]\n"
            "    reps_ = [statistic(x[rng.integers(0, x.shape[0], size=x.shape), cols]) for _ in range(reps)]\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(np.mean(reps_)), float(lo), float(hi)",
    },
    "logit_lens": {
        "no final layer norm on the intermediate layers":
            "with torch.no_grad():\n        hs = model(input_ids.to(model.device), output_hidden_states=True).hidden_states\n"
            "        return torch.stack([model.lm_head(h).log_softmax(-1) for h in hs])",
        "final layer norm applied twice to the last layer":
            "with torch.no_grad():\n        hs = model(input_ids.to(model.device), output_hidden_states=True).hidden_states\n"
            "        return torch.stack([model.lm_head(model.transformer.ln_f(h)).log_softmax(-1) for h in hs])",
        "logits, not log-probabilities":
            "with torch.no_grad():\n        hs = model(input_ids.to(model.device), output_hidden_states=True).hidden_states\n"
            "        out = [model.lm_head(model.transformer.ln_f(h)) for h in hs[:-1]] + [model.lm_head(hs[-1])]\n"
            "        return torch.stack(out)",
        "the embedding layer left out":
            "with torch.no_grad():\n        hs = model(input_ids.to(model.device), output_hidden_states=True).hidden_states\n"
            "        out = [model.lm_head(model.transformer.ln_f(h)) for h in hs[1:-1]] + [model.lm_head(hs[-1])]\n"
            "        return torch.stack(out).log_softmax(-1)",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "ece": {
        "numpy digitize with the edges": _ECE_HEAD + "    edges = np.linspace(0, 1, n_bins + 1)\n"
        "    idx = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)\n"
        "    n = np.bincount(idx, minlength=n_bins)\n    s_c = np.bincount(idx, conf, n_bins)\n    s_a = np.bincount(idx, hit, n_bins)\n"
        "    full = n > 0\n    return float(np.abs(s_a[full] - s_c[full]).sum() / len(conf))",
        "a dict of bins, pure python": "conf = [float(c) for c in np.asarray(confidences, dtype=float).ravel()]\n"
        "    hit = [float(h) for h in np.asarray(correct, dtype=float).ravel()]\n    bins = {}\n"
        "    for c, h in zip(conf, hit):\n        b = min(int(c * n_bins), n_bins - 1)\n"
        "        bins.setdefault(b, []).append((c, h))\n    total = 0.0\n    for items in bins.values():\n"
        "        mc = sum(c for c, _ in items) / len(items)\n        ma = sum(h for _, h in items) / len(items)\n"
        "        total += len(items) / len(conf) * abs(ma - mc)\n    return total",
        "the package": "from rl4lmt import calibration\n    return calibration.expected_calibration_error(confidences, correct, n_bins)",
    },
    "top_label_ece": {
        "torch max": "P = torch.as_tensor(np.asarray(probs, dtype=np.float64))\n    c, k = P.max(dim=1)\n"
        "    return ece(c.numpy(), (k.numpy() == np.asarray(labels)).astype(int), n_bins)",
    },
    "fit_temperature": {
        "fine grid over log T, then a finer one":
            "z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    def nll(t):\n        return float(torch.nn.functional.cross_entropy(z / t, y))\n"
            "    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))\n"
            "    best = grid[int(np.argmin([nll(t) for t in grid]))]\n"
            "    fine = best * np.exp(np.linspace(-0.02, 0.02, 401))\n"
            "    return float(fine[int(np.argmin([nll(t) for t in fine]))])",
        "scipy minimize_scalar on T": "from scipy.optimize import minimize_scalar\n"
            "    z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    res = minimize_scalar(lambda t: float(torch.nn.functional.cross_entropy(z / t, y)), bounds=(0.05, 20),\n"
            "                          method='bounded', options={'xatol': 1e-6})\n    return float(res.x)",
        "gradient descent on log T with Adam":
            "z = torch.as_tensor(logits).double()\n    y = torch.as_tensor(labels).long()\n"
            "    s = torch.zeros((), dtype=torch.float64, requires_grad=True)\n    opt = torch.optim.Adam([s], lr=0.05)\n"
            "    for _ in range(600):\n        opt.zero_grad()\n        loss = torch.nn.functional.cross_entropy(z * torch.exp(-s), y)\n"
            "        loss.backward()\n        opt.step()\n    return float(torch.exp(s))",
    },
    "calibration_report": {
        "numpy softmax": "T = fit_temperature(val_logits, val_labels)\n    z = np.asarray(torch.as_tensor(test_logits).double())\n"
        "    def softmax(a):\n        e = np.exp(a - a.max(1, keepdims=True))\n        return e / e.sum(1, keepdims=True)\n"
        "    q = torch.tensor(softmax(z / T))\n"
        "    return dict(T=T, test_probs=q, ece_before=top_label_ece(softmax(z), test_labels, n_bins),\n"
        "                ece_after=top_label_ece(q, test_labels, n_bins))",
    },
    "iqm": {
        "scipy trim_mean": "import scipy.stats\n    return float(scipy.stats.trim_mean(np.asarray(scores, dtype=float), 0.25, axis=None))",
        "torch sort": "x = torch.as_tensor(np.asarray(scores, dtype=np.float64)).flatten().sort().values\n"
        "    k = x.numel() // 4\n    return float(x[k:x.numel() - k].mean())",
    },
    "stratified_bootstrap": {
        "vectorised indices, one draw per replicate":
            "x = np.asarray(scores, dtype=float)\n    x = x[:, None] if x.ndim == 1 else x\n    rng = np.random.default_rng(seed)\n"
            "    cols = np.arange(x.shape[1])[None, :]\n"
            "    reps_ = [statistic(x[rng.integers(0, x.shape[0], size=x.shape), cols]) for _ in range(reps)]\n"
            "    lo, hi = np.percentile(reps_, [50 * (1 - confidence), 50 * (1 + confidence)])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
        "rng.choice per task": "x = np.asarray(scores, dtype=float)\n    x = x[:, None] if x.ndim == 1 else x\n"
            "    rng = np.random.default_rng(seed)\n    vals = []\n    for _ in range(reps):\n"
            "        cols = [rng.choice(x[:, t], size=x.shape[0], replace=True) for t in range(x.shape[1])]\n"
            "        vals.append(statistic(np.stack(cols, axis=1)))\n"
            "    a = (1 - confidence) / 2\n    lo, hi = np.quantile(vals, [a, 1 - a])\n"
            "    return float(statistic(x)), float(lo), float(hi)",
    },
    "logit_lens": {
        "get_output_embeddings and inference_mode":
            "dev = next(model.parameters()).device\n    with torch.inference_mode():\n"
            "        hs = model(input_ids=input_ids.to(dev), output_hidden_states=True).hidden_states\n"
            "        W = model.get_output_embeddings()\n        norm = model.transformer.ln_f\n"
            "        out = [torch.nn.functional.log_softmax(W(norm(h) if i < len(hs) - 1 else h), dim=-1)\n"
            "               for i, h in enumerate(hs)]\n    return torch.stack(out).clone()",
    },
}


SUITE = MutationSuite(
    "ch08-calibration", WRONG, RIGHT, base=["setup", "imports"],
    needs={"top_label_ece": ["ece"], "calibration_report": ["ece", "top_label_ece", "fit_temperature"]},
)
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
