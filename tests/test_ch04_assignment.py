"""The ch04-policy-gradients tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation, runs
the task's test cell (visible and hidden tests), and checks the verdict. The generic pipeline
checks (solution full marks, release scores nothing, no leaks) live in tests/test_grading.py; this
file is about *which* mistakes the hidden tests catch (the brief's list: forgetting to reverse the
return accumulation, a baseline that leaks gradient, a sign error, a missing stop-gradient on the
advantage; for PPO's clipped loss: max for min, the advantage clipped instead of the ratio, the ratio
inverted or computed as a quotient of probabilities that underflow, the sign, the mask, gradients
through the wrong inputs, a hard-coded epsilon, wrong diagnostics).
"""
from rl4lmt.grading.mutants import MutationSuite


def _ppo(ratio="(logprobs - old).exp()", obj="torch.min(r * A, r.clamp(1 - clip_eps, 1 + clip_eps) * A)",
         loss="-(obj * w).sum() / w.sum()", old="old_logprobs.detach()", adv="advantages.detach()",
         kl="float(((r - 1 - torch.log(r)) * w).sum() / w.sum())",
         cf="float((((r - 1).abs() > clip_eps).float() * w).sum() / w.sum())", ret="loss, {'approx_kl': kl, 'clipfrac': cf}"):
    """A ppo_clip_loss body with one piece swapped (the defaults make a correct one)."""
    return (f"old = {old}; A = {adv}\n    w = torch.ones_like(logprobs) if mask is None else mask\n    r = {ratio}\n"
            f"    obj = {obj}\n    loss = {loss}\n    kl = {kl}\n    cf = {cf}\n    return {ret}")


WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "returns_to_go": {
        "accumulates in place in the caller's rewards":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    for t in range(rewards.shape[-1] - 2, -1, -1):\n"
            "        rewards[..., t] += gamma * rewards[..., t + 1]\n    return rewards",
        "discounts from step 0, then divides by gamma^t (underflows on long episodes)":
            "r = torch.as_tensor(rewards, dtype=torch.float32)\n    d = torch.tensor(float(gamma)) ** torch.arange(r.shape[-1], dtype=torch.float32)\n"
            "    if gamma == 0:\n        return r.clone()\n    return (r * d).flip(-1).cumsum(-1).flip(-1) / d",
        "returns a NumPy array":
            "r = np.asarray(rewards, dtype=np.float32)\n    out = np.zeros_like(r)\n    run = np.zeros(r.shape[:-1], np.float32)\n"
            "    for t in reversed(range(r.shape[-1])):\n        run = r[..., t] + gamma * run\n        out[..., t] = run\n    return out",
        "accumulated forwards (not reversed)":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    out = torch.zeros_like(rewards); run = torch.zeros_like(rewards[..., 0])\n"
            "    for t in range(rewards.shape[-1]):\n        run = rewards[..., t] + gamma * run\n        out[..., t] = run\n    return out",
        "reversed twice (returns-to-go listed backwards)":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    out = []; run = torch.zeros_like(rewards[..., 0])\n"
            "    for t in reversed(range(rewards.shape[-1])):\n        run = rewards[..., t] + gamma * run\n        out.append(run)\n    return torch.stack(out, -1)",
        "whole return G_0 at every step":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    T = rewards.shape[-1]\n"
            "    g0 = (rewards * gamma ** torch.arange(T, dtype=torch.float32)).sum(-1, keepdim=True)\n    return g0.expand_as(rewards).clone()",
        "own reward discounted too (G_t = gamma (r_t + G_{t+1}))":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    out = torch.zeros_like(rewards); run = torch.zeros_like(rewards[..., 0])\n"
            "    for t in reversed(range(rewards.shape[-1])):\n        run = gamma * (rewards[..., t] + run)\n        out[..., t] = run\n    return out",
        "1-D only (loops over rewards[t], not rewards[..., t])":
            "rewards = torch.as_tensor(rewards, dtype=torch.float32)\n    out = torch.zeros_like(rewards); run = 0.0\n"
            "    for t in reversed(range(len(rewards))):\n        run = rewards[t] + gamma * run\n        out[t] = run\n    return out",
    },
    "reinforce_loss_with_baseline": {
        "sign error (ascends the loss)": "return ((logprobs * (returns - baseline).detach() * mask).sum(-1).mean())",
        "baseline leaks gradient": "return -(logprobs * (returns.detach() - baseline) * mask).sum(-1).mean()",
        "no stop-gradient at all": "return -(logprobs * (returns - baseline) * mask).sum(-1).mean()",
        "mask ignored": "return -(logprobs * (returns - baseline).detach()).sum(-1).mean()",
        "baseline ignored": "return -(logprobs * returns.detach() * mask).sum(-1).mean()",
        "mean over all steps (not sum over time)": "return -(logprobs * (returns - baseline).detach() * mask).mean()",
        "baseline added": "return -(logprobs * (returns + baseline).detach() * mask).sum(-1).mean()",
    },
    "reinforce_lm_loss": {
        "no stop-gradient on the KL in the advantage":
            "seq = (logprobs * response_mask).sum(-1)\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1)\n"
            "    G = rewards - kl_coef * kl\n    A = G - (G.sum() - G) / (G.shape[0] - 1)\n    return -(A * seq).mean()",
        "KL sign flipped":
            "seq = (logprobs * response_mask).sum(-1)\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1).detach()\n"
            "    G = rewards + kl_coef * kl\n    A = (G - (G.sum() - G) / (G.shape[0] - 1)).detach()\n    return -(A * seq).mean()",
        "loss sign flipped":
            "seq = (logprobs * response_mask).sum(-1)\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1).detach()\n"
            "    G = rewards - kl_coef * kl\n    A = (G - (G.sum() - G) / (G.shape[0] - 1)).detach()\n    return (A * seq).mean()",
        "batch-mean baseline (not leave-one-out)":
            "seq = (logprobs * response_mask).sum(-1)\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1).detach()\n"
            "    G = rewards - kl_coef * kl\n    A = (G - G.mean()).detach()\n    return -(A * seq).mean()",
        "no baseline":
            "seq = (logprobs * response_mask).sum(-1)\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1).detach()\n"
            "    G = rewards - kl_coef * kl\n    return -(G * seq).mean()",
        "padding counted":
            "seq = logprobs.sum(-1)\n    kl = (logprobs - ref_logprobs).sum(-1).detach()\n"
            "    G = rewards - kl_coef * kl\n    A = (G - (G.sum() - G) / (G.shape[0] - 1)).detach()\n    return -(A * seq).mean()",
        "per-token mean instead of sum (length-normalised)":
            "n = response_mask.sum(-1)\n    seq = (logprobs * response_mask).sum(-1) / n\n    kl = ((logprobs - ref_logprobs) * response_mask).sum(-1).detach()\n"
            "    G = rewards - kl_coef * kl\n    A = (G - (G.sum() - G) / (G.shape[0] - 1)).detach()\n    return -(A * seq).mean()",
        "KL never subtracted":
            "seq = (logprobs * response_mask).sum(-1)\n    G = rewards\n    A = (G - (G.sum() - G) / (G.shape[0] - 1)).detach()\n    return -(A * seq).mean()",
    },
    "ppo_clip_loss": {
        "max instead of min": _ppo(obj="torch.max(r * A, r.clamp(1 - clip_eps, 1 + clip_eps) * A)"),
        "advantage clipped instead of the ratio": _ppo(obj="torch.min(r * A, r * A.clamp(1 - clip_eps, 1 + clip_eps))"),
        "ratio inverted (old / new)": _ppo(ratio="(old - logprobs).exp()"),
        "ratio as a quotient of probabilities (0 / 0 at -1000 nats)": _ppo(ratio="logprobs.exp() / old.exp()"),
        "returns the objective, not the loss (sign)": _ppo(loss="(obj * w).sum() / w.sum()"),
        "mask ignored": _ppo(loss="-obj.mean()"),
        "mean over padding too (divides by every entry)": _ppo(loss="-(obj * w).mean()"),
        "no gradient through logprobs": _ppo(ratio="(logprobs.detach() - old).exp()"),
        "gradient through old_logprobs": _ppo(old="old_logprobs"),
        "gradient through the advantages": _ppo(adv="advantages"),
        "clip_eps hard-coded to 0.2": _ppo(obj="torch.min(r * A, r.clamp(0.8, 1.2) * A)"),
        "clipped term only (no min)": _ppo(obj="r.clamp(1 - clip_eps, 1 + clip_eps) * A"),
        "no clipping at all (TRPO's L^CPI)": _ppo(obj="r * A"),
        "approx_kl as the mean of -log r": _ppo(kl="float((-torch.log(r) * w).sum() / w.sum())"),
        "clipfrac counts padding": _ppo(cf="float(((r - 1).abs() > clip_eps).float().mean())"),
        "clipfrac with the clipped share of the loss's terms instead of the ratios": _ppo(
            cf="float(((r.clamp(1 - clip_eps, 1 + clip_eps) * A < r * A).float() * w).sum() / w.sum())"),
        "info values are tensors": _ppo(kl="((r - 1 - torch.log(r)) * w).sum() / w.sum()"),
        "returns only the loss": _ppo(ret="loss"),
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "returns_to_go": {
        "discount matrix": "r = torch.as_tensor(rewards, dtype=torch.float32)\n    T = r.shape[-1]\n    k = torch.arange(T)\n"
                           "    D = torch.where(k[None, :] >= k[:, None], float(gamma) ** (k[None, :] - k[:, None]).clamp(min=0).float(), torch.zeros(()))\n"
                           "    return r @ D.T",
        "python lists, row by row": "r = torch.as_tensor(rewards, dtype=torch.float32)\n    flat = r.reshape(-1, r.shape[-1]).tolist()\n    out = []\n"
                                    "    for row in flat:\n        g, acc = 0.0, []\n        for x in row[::-1]:\n            g = x + gamma * g\n            acc.append(g)\n        out.append(acc[::-1])\n"
                                    "    return torch.tensor(out).reshape(r.shape)",
    },
    "reinforce_loss_with_baseline": {
        "double loop": "m, T = logprobs.shape\n    total = 0.0\n    for i in range(m):\n        for t in range(T):\n"
                       "            if mask[i, t]:\n                total = total - logprobs[i, t] * (returns[i, t] - baseline[i, t]).item()\n    return total / m",
        "with torch.no_grad weights": "with torch.no_grad():\n        w = returns - baseline\n    return -torch.einsum('it,it,it->', logprobs, w, mask) / logprobs.shape[0]",
    },
    "reinforce_lm_loss": {
        "package pieces": "kl = pg.sequence_kl(logprobs.detach(), ref_logprobs, response_mask)\n    G = rewards - kl_coef * kl\n"
                          "    return pg.reinforce_loss(logprobs, G[:, None], pg.leave_one_out_baseline(G)[:, None], mask=response_mask)",
        "explicit loop over the batch": "B = logprobs.shape[0]\n    with torch.no_grad():\n"
                                        "        G = torch.stack([rewards[i] - kl_coef * ((logprobs[i] - ref_logprobs[i]) * response_mask[i]).sum() for i in range(B)])\n"
                                        "    loss = 0.0\n    for i in range(B):\n        b = (G.sum() - G[i]) / (B - 1)\n"
                                        "        loss = loss - (G[i] - b) * (logprobs[i] * response_mask[i]).sum()\n    return loss / B",
    },
    "ppo_clip_loss": {
        "the same body as the table's mistakes, unswapped": _ppo(),
        "CleanRL's max of negated surrogates, masked by indexing":
            "ratio = torch.exp(logprobs - old_logprobs.detach())\n    adv = advantages.detach()\n"
            "    keep = torch.ones_like(logprobs, dtype=torch.bool) if mask is None else mask > 0\n"
            "    per_entry = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))\n"
            "    r = ratio.detach()[keep]\n"
            "    return per_entry[keep].mean(), {'approx_kl': (r - 1 - r.log()).mean().item(),\n"
            "                                    'clipfrac': ((r - 1).abs() > clip_eps).float().mean().item()}",
        "a loop over entries with Spinning Up's g(eps, A)":
            "import math\n    old = old_logprobs.detach().reshape(-1).tolist()\n    adv = advantages.detach().reshape(-1).tolist()\n"
            "    keep = [1.0] * len(old) if mask is None else mask.reshape(-1).tolist()\n    new = logprobs.reshape(-1)\n"
            "    terms, kl, clipped = [], 0.0, 0\n    for i, (o, a, m) in enumerate(zip(old, adv, keep)):\n"
            "        if m == 0:\n            continue\n        r = torch.exp(new[i] - o)\n"
            "        g = (1 + clip_eps) * a if a >= 0 else (1 - clip_eps) * a\n"
            "        terms.append(torch.minimum(r * a, torch.tensor(g, dtype=r.dtype)))\n"
            "        kl += r.item() - 1 - math.log(r.item())\n        clipped += abs(r.item() - 1) > clip_eps\n"
            "    return -torch.stack(terms).mean(), {'approx_kl': kl / len(terms), 'clipfrac': clipped / len(terms)}",
        "the course package": "return pg.ppo_clip_loss(logprobs, old_logprobs, advantages, clip_eps=clip_eps, mask=mask)",
    },
}


SUITE = MutationSuite("ch04-policy-gradients", WRONG, RIGHT, base=["setup", "imports"])
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
