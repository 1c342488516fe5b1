"""The ch07-ppo-rlhf tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation, runs
the task's test cell (visible and hidden tests), and checks the verdict. The generic pipeline
checks (solution full marks, release scores nothing, no leaks) live in tests/test_grading.py; this
file is about *which* mistakes the hidden tests catch (the issue's list: GAE run forwards or
without the terminal mask, gamma and lambda swapped, the KL sign flipped or applied at the wrong
token, advantages not detached or whitened over the wrong axis, the ratio taken against the new
policy twice, max and min swapped in the clip, DPO's reference log-ratio with the wrong sign or
beta misplaced).
"""
from rl4lmt.grading.mutants import MutationSuite

_LAST = "is_last = (m > 0) & (m.cumsum(-1) == m.sum(-1, keepdim=True))\n    "
_GAE_LOOP = (
    "r, v, m = rewards.detach().float(), values.detach().float(), mask.float()\n    B, T = r.shape\n    adv = torch.zeros(B, T)\n"
    "    for b in range(B):\n        carry, v_next = 0.0, 0.0\n        for t in {order}:\n"
    "            if m[b, t] == 0:\n                {reset}\n                continue\n"
    "            td = r[b, t] + {g1} * v_next - v[b, t]\n            carry = td + gamma * lam * carry\n"
    "            adv[b, t] = carry\n            v_next = v[b, t]\n    return adv, (adv + v) * m"
)
_WHITEN = "keep = mask.bool()\n    a = advantages.detach()\n    a = (a - a[keep].mean()) / (a[keep].std() + 1e-8)\n    "
_CLIP = "torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)"

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "kl_shaped_rewards": {
        "KL sign flipped (a KL earns reward)":
            "m = mask.float()\n    " + _LAST + "return is_last.float() * scores[:, None] + kl_coef * (logprobs - ref_logprobs) * m",
        "score at the last column (a pad), not the last response token":
            "m = mask.float()\n    out = -kl_coef * (logprobs - ref_logprobs) * m\n    out = out.clone()\n    out[:, -1] += scores\n    return out",
        "score at the first response token":
            "m = mask.float()\n    first = (m > 0) & (m.cumsum(-1) == 1)\n"
            "    return first.float() * scores[:, None] - kl_coef * (logprobs - ref_logprobs) * m",
        "KL penalty on padding and prompt too":
            "m = mask.float()\n    " + _LAST + "return is_last.float() * scores[:, None] - kl_coef * (logprobs - ref_logprobs)",
        "KL shifted by one token":
            "m = mask.float()\n    " + _LAST + "kl = torch.roll(logprobs - ref_logprobs, 1, dims=-1)\n"
            "    return is_last.float() * scores[:, None] - kl_coef * kl * m",
        "inputs modified in place":
            "m = mask.float()\n    " + _LAST + "logprobs -= ref_logprobs\n    logprobs *= -kl_coef * m\n"
            "    return logprobs + is_last.float() * scores[:, None]",
    },
    "gae": {
        "recursion run forwards": _GAE_LOOP.format(order="range(T)", reset="carry, v_next = 0.0, 0.0", g1="gamma"),
        "no terminal mask (bootstraps from the value at the pad)":
            "r, v, m = rewards.detach().float(), values.detach().float(), mask.float()\n    B, T = r.shape\n    adv = torch.zeros(B, T)\n"
            "    for b in range(B):\n        carry = 0.0\n        for t in range(T - 1, -1, -1):\n"
            "            v_next = v[b, t + 1] if t + 1 < T else 0.0\n"
            "            td = r[b, t] + gamma * v_next - v[b, t]\n            carry = td + gamma * lam * carry\n"
            "            adv[b, t] = carry * m[b, t]\n    return adv, (adv + v) * m",
        "gamma and lambda swapped":
            "r, v, m = rewards.detach().float(), values.detach().float(), mask.float()\n    B, T = r.shape\n    adv = torch.zeros(B, T)\n"
            "    for b in range(B):\n        carry, v_next = 0.0, 0.0\n        for t in range(T - 1, -1, -1):\n"
            "            if m[b, t] == 0:\n                carry, v_next = 0.0, 0.0\n                continue\n"
            "            td = r[b, t] + lam * v_next - v[b, t]\n            carry = td + gamma * lam * carry\n"
            "            adv[b, t] = carry\n            v_next = v[b, t]\n    return adv, (adv + v) * m",
        "returns without the values (A instead of A + V)":
            "r, v, m = rewards.detach().float(), values.detach().float(), mask.float()\n    B, T = r.shape\n    adv = torch.zeros(B, T)\n"
            "    for b in range(B):\n        carry, v_next = 0.0, 0.0\n        for t in range(T - 1, -1, -1):\n"
            "            if m[b, t] == 0:\n                carry, v_next = 0.0, 0.0\n                continue\n"
            "            td = r[b, t] + gamma * v_next - v[b, t]\n            carry = td + gamma * lam * carry\n"
            "            adv[b, t] = carry\n            v_next = v[b, t]\n    return adv, adv",
        "advantages not detached (a graph into the critic)":
            "B, T = rewards.shape\n    cols = [torch.zeros(B)] * T\n    carry = torch.zeros(B)\n    v_next = torch.zeros(B)\n"
            "    for t in range(T - 1, -1, -1):\n        live = mask[:, t].float()\n"
            "        td = rewards[:, t] + gamma * v_next - values[:, t]\n        carry = (td + gamma * lam * carry) * live\n"
            "        cols[t] = carry\n        v_next = values[:, t] * live\n    adv = torch.stack(cols, -1)\n"
            "    return adv, (adv + values) * mask",
    },
    "clipped_policy_loss": {
        "advantages not detached":
            "keep = mask.bool()\n    a = (advantages - advantages[keep].mean()) / (advantages[keep].std() + 1e-8)\n"
            "    ratio = torch.exp(logprobs - old_logprobs)\n    return -" + _CLIP + "[keep].mean()",
        "whitened per row (wrong axis)":
            "keep = mask.bool()\n    a = advantages.detach()\n    rows = []\n    for b in range(a.shape[0]):\n"
            "        sel = a[b][keep[b]]\n        rows.append((a[b] - sel.mean()) / (sel.std() + 1e-8) if sel.numel() > 1 else a[b] - sel.mean())\n"
            "    a = torch.stack(rows)\n    ratio = torch.exp(logprobs - old_logprobs)\n    return -" + _CLIP + "[keep].mean()",
        "not whitened at all":
            "keep = mask.bool()\n    a = advantages.detach()\n    ratio = torch.exp(logprobs - old_logprobs)\n    return -" + _CLIP + "[keep].mean()",
        "whitened including the padding":
            "keep = mask.bool()\n    a = advantages.detach()\n    a = (a - a.mean()) / (a.std() + 1e-8)\n"
            "    ratio = torch.exp(logprobs - old_logprobs)\n    return -" + _CLIP + "[keep].mean()",
        "ratio against the new policy twice":
            _WHITEN + "ratio = torch.exp(logprobs - logprobs.detach())\n    return -" + _CLIP + "[keep].mean()",
        "max instead of min":
            _WHITEN + "ratio = torch.exp(logprobs - old_logprobs)\n"
            "    return -torch.maximum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)[keep].mean()",
        "ratio inverted (old / new)":
            _WHITEN + "ratio = torch.exp(old_logprobs - logprobs)\n    return -" + _CLIP + "[keep].mean()",
        "sign flipped (ascends the loss)":
            _WHITEN + "ratio = torch.exp(logprobs - old_logprobs)\n    return " + _CLIP + "[keep].mean()",
        "padding counted in the mean":
            _WHITEN + "ratio = torch.exp(logprobs - old_logprobs)\n    return -(" + _CLIP + " * mask).mean()",
    },
    "clipped_value_loss": {
        "min instead of max":
            "step = torch.clamp(values - old_values, -clip, clip)\n"
            "    return 0.5 * torch.min((values - returns) ** 2, (old_values + step - returns) ** 2)[mask.bool()].mean()",
        "clips the value itself, not its change":
            "vc = torch.clamp(values, -clip, clip)\n"
            "    return 0.5 * torch.max((values - returns) ** 2, (vc - returns) ** 2)[mask.bool()].mean()",
        "no clipping":
            "return 0.5 * ((values - returns) ** 2)[mask.bool()].mean()",
        "returns not detached":
            "step = torch.clamp(values - old_values, -clip, clip)\n"
            "    return 0.5 * torch.max((values - returns) ** 2, (old_values + step - returns) ** 2)[mask.bool()].mean()",
        "missing the 1/2":
            "step = torch.clamp(values - old_values, -clip, clip)\n    r = returns.detach()\n"
            "    return torch.max((values - r) ** 2, (old_values + step - r) ** 2)[mask.bool()].mean()",
    },
    "dpo_loss": {
        "reference log-ratio with the wrong sign":
            "margin = (policy_chosen_logps + ref_chosen_logps) - (policy_rejected_logps + ref_rejected_logps)\n"
            "    return -F.logsigmoid(beta * margin).mean()",
        "beta outside the log-sigmoid":
            "margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)\n"
            "    return -beta * F.logsigmoid(margin).mean()",
        "beta on the chosen side only":
            "margin = beta * (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)\n"
            "    return -F.logsigmoid(margin).mean()",
        "chosen and rejected swapped":
            "margin = (policy_rejected_logps - ref_rejected_logps) - (policy_chosen_logps - ref_chosen_logps)\n"
            "    return -F.logsigmoid(beta * margin).mean()",
        "unstable log of a sigmoid":
            "margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)\n"
            "    return -torch.log(torch.sigmoid(beta * margin)).mean()",
        "sum instead of mean":
            "margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)\n"
            "    return -F.logsigmoid(beta * margin).sum()",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "kl_shaped_rewards": {
        "package function": "return ppo.kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)",
        "loop over rows": "out = -kl_coef * (logprobs - ref_logprobs).detach() * mask\n    out = out.clone()\n"
                          "    for b in range(out.shape[0]):\n        last = int(mask[b].nonzero().max())\n"
                          "        out[b, last] = out[b, last] + scores[b]\n    return out",
    },
    "gae": {
        "package function": "return ppo.gae(rewards, values.detach(), mask, gamma, lam)",
        "vectorised backward pass over time":
            "v = values.detach()\n    m = mask.float()\n    A = torch.zeros_like(rewards)\n    a_next = torch.zeros(rewards.shape[0])\n"
            "    v_next = torch.zeros(rewards.shape[0])\n    for t in reversed(range(rewards.shape[1])):\n"
            "        d = rewards[:, t] + gamma * v_next - v[:, t]\n        A[:, t] = (d + gamma * lam * a_next) * m[:, t]\n"
            "        a_next = A[:, t]\n        v_next = v[:, t] * m[:, t]\n    return A, (A + v) * m",
        "discounted sum of TD errors (no recursion)":
            "v = values.detach()\n    m = mask.float()\n    B, T = rewards.shape\n    A = torch.zeros(B, T)\n"
            "    for b in range(B):\n        idx = m[b].nonzero().flatten().tolist()\n        vv = [float(v[b, t]) for t in idx] + [0.0]\n"
            "        d = [float(rewards[b, t]) + gamma * vv[k + 1] - vv[k] for k, t in enumerate(idx)]\n"
            "        for k, t in enumerate(idx):\n            A[b, t] = sum((gamma * lam) ** j * d[k + j] for j in range(len(d) - k))\n"
            "    return A, (A + v) * m",
    },
    "clipped_policy_loss": {
        "package pieces":
            "a = advantages.detach()\n    sel = a[mask.bool()]\n    a = (a - sel.mean()) / (sel.std() + 1e-8)\n"
            "    return pg.ppo_clip_loss(logprobs, old_logprobs, a, clip_eps, mask=mask)[0]",
        "the pessimistic case split written out":
            "keep = mask.bool()\n    a = advantages.detach()\n    a = (a - a[keep].mean()) / (a[keep].std() + 1e-8)\n"
            "    ratio = (logprobs - old_logprobs.detach()).exp()\n"
            "    capped = torch.where(a >= 0, torch.clamp(ratio, max=1 + clip_eps), torch.clamp(ratio, min=1 - clip_eps))\n"
            "    obj = torch.where(a >= 0, torch.minimum(ratio, capped), torch.maximum(ratio, capped)) * a\n"
            "    return -(obj * mask).sum() / mask.sum()",
    },
    "clipped_value_loss": {
        "package function": "return ppo.clipped_value_loss(values, old_values, returns.detach(), mask, clip)[0]",
        "weighted sum": "r = returns.detach()\n    vc = old_values + (values - old_values).clamp(-clip, clip)\n"
                        "    e = torch.where((values - r) ** 2 > (vc - r) ** 2, (values - r) ** 2, (vc - r) ** 2)\n"
                        "    return (e * mask).sum() / (2 * mask.sum())",
    },
    "dpo_loss": {
        "package function": "return ppo.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)[0]",
        "logsigmoid of the implicit rewards":
            "rw = beta * (policy_chosen_logps - ref_chosen_logps)\n    rl = beta * (policy_rejected_logps - ref_rejected_logps)\n"
            "    return -torch.nn.functional.logsigmoid(rw - rl).mean()",
    },
}


SUITE = MutationSuite("ch07-ppo-rlhf", WRONG, RIGHT, base=["setup", "imports"])
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
