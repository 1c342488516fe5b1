"""The ch06-reward tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation, runs
the task's test cell (visible and hidden tests), and checks the verdict (rl4lmt.grading.mutants).
The mistakes are the issue's list: chosen and rejected swapped, the score read at a pad position,
``sigmoid`` instead of ``logsigmoid`` or an unstable log of a sigmoid, a mean over the wrong axis,
ties counted as wins, the best-of-n KL off by its (n - 1)/n term; and a few more of the same kind.
"""
from rl4lmt.grading.mutants import MutationSuite

WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "last_token_scores": {
        "reads column -1 (a pad position)": "return values[:, -1]",
        "reads the first pad (off by one)":
            "idx = attention_mask.long().sum(1).clamp(max=values.shape[1] - 1)\n"
            "    return values.gather(1, idx[:, None]).squeeze(1)",
        "mean over time (the wrong axis)": "return (values * attention_mask).sum(1) / attention_mask.sum(1)",
        "first token": "return values[:, 0]",
        "max over the real tokens": "return values.masked_fill(attention_mask == 0, float('-inf')).max(1).values",
    },
    "bradley_terry_loss": {
        "chosen and rejected swapped":
            "s = last_token_scores(values, attention_mask)\n    b = s.shape[0] // 2\n    return -F.logsigmoid(s[b:] - s[:b]).mean()",
        "score read at a pad position":
            "s = values[:, -1]\n    b = s.shape[0] // 2\n    return -F.logsigmoid(s[:b] - s[b:]).mean()",
        "sigmoid instead of logsigmoid":
            "s = last_token_scores(values, attention_mask)\n    b = s.shape[0] // 2\n    return -torch.sigmoid(s[:b] - s[b:]).mean()",
        "unstable log of a sigmoid":
            "s = last_token_scores(values, attention_mask)\n    b = s.shape[0] // 2\n"
            "    return -torch.log(torch.sigmoid(s[:b] - s[b:])).mean()",
        "mean over the wrong axis (per token, all positions)":
            "b = values.shape[0] // 2\n    return -F.logsigmoid(values[:b] - values[b:]).mean()",
        "sum over pairs instead of the mean":
            "s = last_token_scores(values, attention_mask)\n    b = s.shape[0] // 2\n    return -F.logsigmoid(s[:b] - s[b:]).sum()",
        "pairs interleaved (chosen, rejected, chosen, ...)":
            "s = last_token_scores(values, attention_mask).view(-1, 2)\n    return -F.logsigmoid(s[:, 0] - s[:, 1]).mean()",
        "loss of the margin, not of its log-likelihood":
            "s = last_token_scores(values, attention_mask)\n    b = s.shape[0] // 2\n    return -(s[:b] - s[b:]).mean()",
    },
    "pairwise_accuracy": {
        "ties counted as wins": "return float((r_chosen >= r_rejected).double().mean())",
        "ties counted half":
            "return float(((r_chosen > r_rejected).double() + 0.5 * (r_chosen == r_rejected).double()).mean())",
        "chosen and rejected swapped": "return float((r_chosen < r_rejected).double().mean())",
        "returns a tensor, not a float": "return (r_chosen > r_rejected).double().mean()",
        "counts wins, not the share": "return float((r_chosen > r_rejected).sum())",
    },
    "best_of_n": {
        "argmax over prompts (the wrong axis)": "return scores.argmax(0)",
        "ties go to the last candidate": "n = scores.shape[1]\n    return n - 1 - scores.flip(1).argmax(1)",
        "worst of n": "return scores.argmin(1)",
        "returns the best score, not its index": "return scores.max(1).values",
        "one index for the whole batch": "return scores.argmax().reshape(1)",
    },
    "best_of_n_kl": {
        "log n only (no (n - 1)/n term)": "return float(math.log(n))",
        "off by n - 1 instead of (n - 1)/n": "return float(math.log(n) - (n - 1))",
        "1/n instead of (n - 1)/n": "return float(math.log(n) - 1 / n)",
        "term added": "return float(math.log(n) + (n - 1) / n)",
        "log base 2": "return float(math.log2(n) - (n - 1) / n)",
        "returns a tensor": "return torch.log(torch.tensor(float(n))) - (n - 1) / n",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "last_token_scores": {
        "loop over rows": "out = []\n    for i in range(values.shape[0]):\n"
                          "        n = int(attention_mask[i].sum())\n        out.append(values[i, n - 1])\n    return torch.stack(out)",
        "gather": "idx = (attention_mask.long().sum(-1) - 1)[:, None]\n    return torch.gather(values, 1, idx)[:, 0]",
        "the package": "return reward.last_token_scores(values, attention_mask)",
    },
    "bradley_terry_loss": {
        "softplus of the negative margin":
            "r_w, r_l = last_token_scores(values, attention_mask).chunk(2)\n    return F.softplus(r_l - r_w).mean()",
        "loop over pairs":
            "s = last_token_scores(values, attention_mask)\n    b = len(s) // 2\n"
            "    terms = [F.logsigmoid(s[i] - s[b + i]) for i in range(b)]\n    return -torch.stack(terms).sum() / b",
        "the package": "r = reward.last_token_scores(values, attention_mask)\n    b = r.shape[0] // 2\n"
                       "    return reward.bradley_terry_loss(r[:b], r[b:])[0]",
    },
    "pairwise_accuracy": {
        "torch": "return (r_chosen > r_rejected).double().mean().item()",
        "numpy": "return float(np.mean(r_chosen.numpy() > r_rejected.numpy()))",
    },
    "best_of_n": {
        "torch.argmax": "return torch.argmax(scores, dim=-1)",
        "numpy": "return torch.from_numpy(np.argmax(scores.numpy(), axis=1))",
    },
    "best_of_n_kl": {
        "math": "return math.log(n) - (n - 1) / n",
        "torch, float64": "return (torch.log(torch.tensor(float(n), dtype=torch.float64)) - (n - 1) / n).item()",
    },
}

SUITE = MutationSuite("ch06-reward", WRONG, RIGHT, base=["setup", "imports"],
                      needs={"bradley_terry_loss": ["last_token_scores"]})
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
