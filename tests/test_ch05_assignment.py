"""The ch05-sft tests grade behaviour: plausible mistakes fail, other correct solutions pass.

Each case swaps the body of one solution in the master notebook for another implementation (or
edits the master's own solution, for the LoRA class), runs the task's test cell (visible and
hidden tests), and checks the verdict. The generic pipeline checks (solution full marks, release
scores nothing, no leaks) live in tests/test_grading.py; this file is about *which* mistakes the
hidden tests catch (the issue's list: B not zero-initialised, alpha instead of alpha / r, a
transposed merge, prompt tokens or padding counted in the loss, the shift off by one, a count that
includes frozen weights).
"""
from rl4lmt.grading.mutants import Edit, MutationSuite

B_INIT = "self.lora_B = nn.Parameter(torch.zeros(out_features, r, **like))  # zero: Delta W = 0 at the start"
A_INIT = "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))"
SCALE = "self.scaling = alpha / r"
FREEZE = "for param in base.parameters():\n            param.requires_grad = False"
MERGE_W = "merged.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))"
FORWARD = "return self.base(x) + self.scaling * low_rank"

WRONG = {  # task -> {mistake: body or Edit}; each must fail the task's tests
    "lora_linear": {
        "B not zero-initialised": Edit((B_INIT, "self.lora_B = nn.Parameter(0.01 * torch.randn(out_features, r, **like))")),
        "A zero too (no gradient ever reaches B's partner)": Edit((A_INIT, "nn.init.zeros_(self.lora_A)")),
        "A drawn from N(0, 1), not Kaiming-uniform": Edit((A_INIT, "nn.init.normal_(self.lora_A)")),
        "alpha instead of alpha / r": Edit((SCALE, "self.scaling = alpha")),
        "r / alpha": Edit((SCALE, "self.scaling = r / alpha")),
        "base not frozen": Edit((FREEZE, "pass")),
        "transposed merge": Edit((MERGE_W, "merged.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A).T)")),
        "merge without the scaling": Edit((MERGE_W, "merged.weight.copy_(self.base.weight + self.lora_B @ self.lora_A)")),
        "merge changes the base in place": Edit(
            ("out_features, in_features = self.base.weight.shape\n        merged = nn.Linear",
             "with torch.no_grad():\n            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)\n"
             "        return self.base\n        out_features, in_features = self.base.weight.shape\n        merged = nn.Linear")),
        "merge drops the bias": Edit(("merged.bias.copy_(self.base.bias)", "merged.bias.zero_()")),
        "forward without the frozen path": Edit((FORWARD, "return self.scaling * low_rank")),
        "forward without the scaling": Edit((FORWARD, "return self.base(x) + low_rank")),
    },
    "completion_only_loss": {
        "prompt tokens counted":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = attention_mask[:, 1:].to(logp.dtype)\n    return -(logp * m).sum() / m.sum()",
        "padding counted (attention mask ignored)":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = completion_mask[:, 1:].to(logp.dtype)\n    return -(logp * m).sum() / m.sum()",
        "shift off by one (mask read at the predicting position)":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = (completion_mask[:, :-1] * attention_mask[:, :-1]).to(logp.dtype)\n    return -(logp * m).sum() / m.sum()",
        "no shift (each position scored on its own token)":
            "logp = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None]).squeeze(-1)\n"
            "    m = (completion_mask * attention_mask).to(logp.dtype)\n    return -(logp * m).sum() / m.sum()",
        "mean per sequence, then over the batch":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(logp.dtype)\n"
            "    return (-(logp * m).sum(-1) / m.sum(-1)).mean()",
        "log of softmax (underflows on large logits)":
            "p = torch.softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(p.dtype)\n    return -(torch.log(p) * m).sum() / m.sum()",
        "sign error":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(logp.dtype)\n    return (logp * m).sum() / m.sum()",
        "sum, not mean":
            "logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    m = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(logp.dtype)\n    return -(logp * m).sum()",
    },
    "lora_trainable_parameters": {
        "counts the frozen weights too":
            "from transformers.pytorch_utils import Conv1D\n    total = 0\n    for name, mod in model.named_modules():\n"
            "        if name.split('.')[-1] in target_modules and isinstance(mod, (nn.Linear, Conv1D)):\n"
            "            total += r * sum(mod.weight.shape) + mod.weight.numel()\n    return total",
        "r * d * k (a full-size update)":
            "from transformers.pytorch_utils import Conv1D\n    total = 0\n    for name, mod in model.named_modules():\n"
            "        if name.split('.')[-1] in target_modules and isinstance(mod, (nn.Linear, Conv1D)):\n"
            "            total += r * mod.weight.numel()\n    return total",
        "counts the biases of the adapted layers":
            "from transformers.pytorch_utils import Conv1D\n    total = 0\n    for name, mod in model.named_modules():\n"
            "        if name.split('.')[-1] in target_modules and isinstance(mod, (nn.Linear, Conv1D)):\n"
            "            total += r * sum(mod.weight.shape) + (mod.bias.numel() if mod.bias is not None else 0)\n    return total",
        "matches names by substring":
            "from transformers.pytorch_utils import Conv1D\n    total = 0\n    for name, mod in model.named_modules():\n"
            "        if any(t in name for t in target_modules) and isinstance(mod, (nn.Linear, Conv1D)):\n"
            "            total += r * sum(mod.weight.shape)\n    return total",
        "matches names by suffix":
            "from transformers.pytorch_utils import Conv1D\n    total = 0\n    for name, mod in model.named_modules():\n"
            "        if any(name.endswith(t) for t in target_modules) and isinstance(mod, (nn.Linear, Conv1D)):\n"
            "            total += r * sum(mod.weight.shape)\n    return total",
        "nn.Linear only (GPT-2's Conv1D layers missed)":
            "total = 0\n    for name, mod in model.named_modules():\n"
            "        if name.split('.')[-1] in target_modules and isinstance(mod, nn.Linear):\n"
            "            total += r * (mod.in_features + mod.out_features)\n    return total",
        "all trainable parameters of the model":
            "return sum(p.numel() for p in model.parameters() if p.requires_grad)",
    },
}

RIGHT = {  # task -> {another correct way: body or Edit}; each must pass
    "lora_linear": {
        "F.linear forward, deepcopy merge, explicit uniform init": Edit(
            (FORWARD, "return self.base(x) + torch.nn.functional.linear(torch.nn.functional.linear(x, self.lora_A), self.lora_B) * self.scaling"),
            (A_INIT, "nn.init.uniform_(self.lora_A, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))"),
            ("out_features, in_features = self.base.weight.shape\n        merged = nn.Linear",
             "merged = copy.deepcopy(self.base)\n        with torch.no_grad():\n"
             "            merged.weight += self.scaling * self.lora_B @ self.lora_A\n"
             "        return merged\n        out_features, in_features = self.base.weight.shape\n        merged = nn.Linear")),
        "einsum forward": Edit((FORWARD, "return self.base(x) + self.scaling * torch.einsum('...k,rk,dr->...d', x, self.lora_A, self.lora_B)")),
    },
    "completion_only_loss": {
        "explicit loops":
            "total, count = 0.0, 0\n    B, T = input_ids.shape\n    for b in range(B):\n        for t in range(1, T):\n"
            "            if completion_mask[b, t] and attention_mask[b, t]:\n"
            "                total = total - torch.log_softmax(logits[b, t - 1], -1)[input_ids[b, t]]\n"
            "                count += 1\n    return total / count",
        "labels with -100 and F.cross_entropy":
            "labels = input_ids.masked_fill((completion_mask * attention_mask) == 0, -100)[:, 1:]\n"
            "    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)",
    },
    "lora_trainable_parameters": {
        "in/out features by layer type":
            "from transformers.pytorch_utils import Conv1D\n    n = 0\n    wanted = set(target_modules)\n"
            "    for name, mod in model.named_modules():\n        last = name.rsplit('.', 1)[-1]\n"
            "        if last not in wanted:\n            continue\n        if isinstance(mod, nn.Linear):\n"
            "            n += r * (mod.in_features + mod.out_features)\n        elif isinstance(mod, Conv1D):\n"
            "            n += r * (mod.nx + mod.nf)\n    return n",
    },
}


SUITE = MutationSuite("ch05-sft", WRONG, RIGHT, base=["setup", "imports"])
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
