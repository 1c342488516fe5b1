"""Tests of rl4lmt.sft against the libraries that do the same job and the lecture's numbers.

- the SFT data against ``TinyReviews.instructions`` (same draws) and TRL's own tokenisation;
- the completion-only loss against TRL's ``SFTTrainer.compute_loss`` on the same batch;
- LoRA against peft (``get_peft_model``: outputs, trainable counts, ``merge_and_unload``);
- parameter counting against the lecture's worked numbers (512 x 64, r = 8: 4,608, 86 % fewer);
- NF4 against the QLoRA paper's codebook and bitsandbytes' ``quantize_4bit``/``dequantize_4bit``;
- the shipped SFT model against the world: instruction score near the world's own ceiling,
  grammatical responses, the pretrained model far below (a fast version of
  ``python -m rl4lmt.sft evaluate``).
"""
import copy
import math

import pytest
import torch

from rl4lmt import sft, zoo
from rl4lmt.world import ASPECTS, TinyReviews

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base():
    return zoo.load("tiny-reviews", device="cpu")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def test_instruction_pairs_are_the_worlds_draws():
    assert sft.instruction_pairs(40, seed=3) == TinyReviews(seed=3).instructions(40)


def test_instruction_dataset_format():
    ds = sft.instruction_dataset(50, seed=1)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 50
    world = TinyReviews()
    for row in ds:
        assert row["prompt"].endswith(" :") and row["completion"].startswith(" ")
        assert world.is_grammatical(row["completion"].strip())
        assert world.instruction_score(row["prompt"], row["completion"].strip()) > 0


def test_exclude_combinations():
    held = [("positive", "acting"), ("very negative", "plot")]
    pairs = sft.instruction_pairs(400, exclude=held, seed=0)
    assert len(pairs) == 400
    seen = {sft.instruction_combo(p) for p, _ in pairs}
    assert not seen & set(held)
    assert len(seen) > 50  # the other 70 combinations are still drawn
    with pytest.raises(ValueError, match="request"):
        sft.instruction_pairs(3, exclude=[("great", "acting")])
    with pytest.raises(TypeError, match="exclude"):
        sft.instruction_pairs(3, exclude=["positive acting"])
    everything = [(r, a) for r in sft.REQUESTS for a in ASPECTS]
    with pytest.raises(ValueError, match="exclude"):
        sft.instruction_pairs(3, exclude=everything)
    with pytest.raises(ValueError, match="n must"):
        sft.instruction_pairs(0)


def test_instruction_combo_round_trip():
    for req in sft.REQUESTS:
        assert sft.instruction_combo(TinyReviews.make_instruction(req, "music")) == (req, "music")
    with pytest.raises(ValueError):
        sft.instruction_combo("write a review about the music :")
    with pytest.raises(TypeError, match="instruction"):
        sft.instruction_combo(3)


# ----------------------------------------------------------------------------------------------
# completion-only loss = TRL's SFTTrainer loss
# ----------------------------------------------------------------------------------------------
def test_completion_only_loss_matches_trl(base, tmp_path):
    model, tok = copy.deepcopy(base[0]), base[1]
    ds = sft.instruction_dataset(12, seed=5)
    trainer = sft.make_trainer(model, tok, ds, sft.SFTRecipe(steps=1, batch_size=12), output_dir=tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(12)])
    model.train()
    trl_loss = trainer.compute_loss(model, dict(batch))
    # our own tokenisation of the same rows: the same ids and the same response positions
    ids, am, cm = sft.tokenize_sft(tok, ds["prompt"], ds["completion"])
    assert torch.equal(ids[:, : batch["input_ids"].shape[1]] * am, batch["input_ids"] * batch["attention_mask"])
    assert torch.equal(cm[:, 1:].bool(), batch["labels"][:, 1:] != -100)
    ours = sft.completion_only_loss(model(input_ids=ids, attention_mask=am).logits, ids, cm, am)
    torch.testing.assert_close(ours, trl_loss, rtol=1e-5, atol=1e-6)


def test_make_trainer_runs_the_callers_callbacks(base, tmp_path):
    from transformers import TrainerCallback

    steps = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            steps.append(state.global_step)

    model, tok = copy.deepcopy(base[0]), base[1]
    ds = sft.instruction_dataset(8, seed=5)
    trainer = sft.make_trainer(model, tok, ds, sft.SFTRecipe(steps=2, batch_size=4, warmup=0), output_dir=tmp_path,
                               callbacks=[Record()])
    trainer.train()
    assert steps == [1, 2]


def test_completion_only_loss_brute_force_and_masking():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 10  # large logits: log-softmax must stay exact
    ids = torch.tensor([[0, 3, 4, 5, 6], [0, 1, 2, 6, 6]])
    cm = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]])  # row 2: last token is padding
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    terms = []
    for b in range(2):
        for t in range(1, 5):
            if cm[b, t] and am[b, t]:
                terms.append(-torch.log_softmax(logits[b, t - 1].double(), -1)[ids[b, t]])
    expected = torch.stack(terms).mean().float()
    torch.testing.assert_close(sft.completion_only_loss(logits, ids, cm, am), expected)
    # padding that the completion mask forgot is still removed by the attention mask
    cm_sloppy = cm.clone()
    cm_sloppy[1, 4] = 1
    torch.testing.assert_close(sft.completion_only_loss(logits, ids, cm_sloppy, am), expected)
    with pytest.raises(ValueError, match="completion_mask"):
        sft.completion_only_loss(logits, ids, cm[:, :3])
    with pytest.raises(ValueError, match="no response token"):
        sft.completion_only_loss(logits, ids, torch.zeros_like(cm))


def test_tokenize_sft_masks():
    tok = zoo.build_tokenizer()
    ids, am, cm = sft.tokenize_sft(tok, ["write a positive review about the music :"], [" the music was catchy ."])
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    assert words[:10] == ["<eos>", "write", "a", "positive", "review", "about", "the", "music", ":", "the"]
    assert words[-1] == "<eos>" and am.all()
    assert cm[0].tolist() == [0] * 9 + [1] * 6  # "the music was catchy ." and the EOS
    with pytest.raises(ValueError, match="same length"):
        sft.tokenize_sft(tok, ["a :"], ["b", "c"])


# ----------------------------------------------------------------------------------------------
# LoRA = peft
# ----------------------------------------------------------------------------------------------
def _peft_twin(model, ours, r, alpha, targets):
    """A peft LoRA model of ``model`` carrying our A and B (B made non-zero to test the forward)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                     fan_in_fan_out=True, bias="none")
    twin = get_peft_model(copy.deepcopy(model), cfg)
    g = torch.Generator().manual_seed(1)
    mods = {n: m for n, m in ours.named_modules() if isinstance(m, sft.LoRALinear)}
    assert mods
    with torch.no_grad():
        for name, m in mods.items():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
            peft_layer = twin.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(m.lora_A)
            peft_layer.lora_B["default"].weight.copy_(m.lora_B)
    return twin


@pytest.mark.parametrize("targets,peft_targets", [(("c_attn",), ["c_attn"]),
                                                  (("c_attn", "c_proj", "c_fc"), "all-linear")])
def test_lora_matches_peft(base, targets, peft_targets):
    model = base[0]
    ours = sft.inject_lora(copy.deepcopy(model), r=4, alpha=8, target_modules=targets, seed=0)
    x = torch.tensor([[0, 152, 9, 165, 12, 2]])
    with torch.no_grad():  # B = 0: the adapted model starts exactly at the pretrained one
        torch.testing.assert_close(ours(x).logits, model(x).logits)
    twin = _peft_twin(model, ours, 4, 8, peft_targets)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, twin(x).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours(x).logits, model(x).logits, atol=1e-3)  # the update is really there
    trainable, total = sft.count_parameters(ours)
    assert (trainable, total) == twin.get_nb_trainable_parameters()
    # merging: the same weights and outputs as peft's merge_and_unload, and no LoRA layer left
    merged_peft = twin.merge_and_unload()
    merged = sft.merge_lora(ours)
    assert not any(isinstance(m, sft.LoRALinear) for m in merged.modules())
    for (n1, p1), (n2, p2) in zip(merged.state_dict().items(), merged_peft.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, merged_peft(x).logits, rtol=1e-5, atol=1e-5)


def test_peft_embedding_copy_is_the_input_only(base):
    """What the benchmark's LoRA runs rely on: peft's ``modules_to_save=["wte"]`` on GPT-2's tied embedding
    trains a copy that the input reads, while the tied output head keeps the pretrained weights (also merged)."""
    from peft import LoraConfig, get_peft_model

    model, tok = copy.deepcopy(base[0]), base[1]
    w0 = model.transformer.wte.weight.detach().clone()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                                          modules_to_save=["wte"], task_type="CAUSAL_LM"))
    wte_copy = pm.base_model.model.transformer.wte.modules_to_save["default"].weight
    head = pm.base_model.model.lm_head.weight
    assert wte_copy.requires_grad and not head.requires_grad
    ids, am, cm = sft.tokenize_sft(tok, ["write a positive review about the plot :"], [" i loved the plot ."])
    sft.completion_only_loss(pm(input_ids=ids, attention_mask=am).logits, ids, cm, am).backward()
    assert wte_copy.grad is not None and wte_copy.grad[ids[0]].abs().sum() > 0
    with torch.no_grad():
        wte_copy.add_(torch.randn(wte_copy.shape, generator=torch.Generator().manual_seed(0)))
        with pm.disable_adapter():
            before = pm(input_ids=ids).logits
        after = pm(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-2  # the forward pass reads the copy
    assert torch.equal(head, w0)  # ... and the output head is still the pretrained embedding
    merged = pm.merge_and_unload()
    assert torch.equal(merged.transformer.wte.weight, wte_copy) and torch.equal(merged.lm_head.weight, w0)


def test_lora_init_like_peft():
    from peft import LoraConfig, get_peft_model

    layer = torch.nn.Linear(64, 512)
    ours = sft.LoRALinear(copy.deepcopy(layer), r=8, alpha=16, generator=torch.Generator().manual_seed(0))
    twin = get_peft_model(torch.nn.Sequential(copy.deepcopy(layer)),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["0"]))
    pa = twin.base_model.model[0]
    assert ours.lora_A.shape == pa.lora_A["default"].weight.shape
    assert ours.lora_B.shape == pa.lora_B["default"].weight.shape
    assert torch.count_nonzero(ours.lora_B) == 0 and torch.count_nonzero(pa.lora_B["default"].weight) == 0
    bound = pa.lora_A["default"].weight.abs().max()  # peft: Kaiming-uniform, bound 1/sqrt(64)
    assert ours.lora_A.abs().max() <= 1 / math.sqrt(64) + 1e-6 and bound <= 1 / math.sqrt(64) + 1e-6
    assert ours.scaling == pa.scaling["default"] == 2.0  # alpha / r, not alpha


def test_lora_linear_gradients_reach_only_the_adapter():
    layer = torch.nn.Linear(6, 5)
    lora = sft.LoRALinear(layer, r=2, alpha=4)
    lora(torch.randn(3, 6)).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0
    assert lora.lora_A.grad is not None  # exactly zero at init (B = 0), but it is connected


def test_lora_bad_input(base):
    with pytest.raises(ValueError, match="r must"):
        sft.LoRALinear(torch.nn.Linear(3, 3), r=0, alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        sft.LoRALinear(torch.nn.Linear(3, 3), r=1, alpha=-1)
    with pytest.raises(TypeError, match="base"):
        sft.LoRALinear(torch.nn.Embedding(3, 3), r=1, alpha=1)
    with pytest.raises(ValueError, match="target_modules"):
        sft.inject_lora(copy.deepcopy(base[0]), target_modules=("q_proj",))


# ----------------------------------------------------------------------------------------------
# parameter counting: the lecture's worked example
# ----------------------------------------------------------------------------------------------
def test_lecture_worked_numbers():
    c = sft.lora_parameter_count(512, 64, 8)
    assert (c["full"], c["A"], c["B"], c["lora"]) == (32_768, 512, 4_096, 4_608)
    assert round(100 * c["reduction"]) == 86
    # the same count read off real tensors: a 512 x 64 weight (d = 512 outputs, k = 64 inputs)
    layer = sft.LoRALinear(torch.nn.Linear(64, 512, bias=False), r=8, alpha=16)
    assert sft.count_parameters(layer) == (4_608, 32_768 + 4_608)
    with pytest.raises(ValueError, match="r must"):
        sft.lora_parameter_count(512, 64, 0)


def test_count_parameters_tied_and_frozen(base):
    model = copy.deepcopy(base[0])
    trainable, total = sft.count_parameters(model)
    assert trainable == total == 824_576  # the head is tied to the embedding: counted once
    for p in model.transformer.wte.parameters():
        p.requires_grad_(False)
    assert sft.count_parameters(model) == (824_576 - 180 * 128, 824_576)
    with pytest.raises(TypeError, match="model"):
        sft.count_parameters("gpt2")


# ----------------------------------------------------------------------------------------------
# NF4 = QLoRA's codebook, bitsandbytes' quantiser
# ----------------------------------------------------------------------------------------------
# Dettmers et al. (2023), QLoRA, Appendix E: the NF4 data type's 16 values
NF4_PAPER = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def test_nf4_codebook_is_the_papers():
    torch.testing.assert_close(sft.nf4_codebook(), torch.tensor(NF4_PAPER), rtol=0, atol=1e-6)


def _unpack_bnb(packed, n):
    """bitsandbytes packs two 4-bit codes per byte, the first in the high nibble."""
    b = packed.flatten()
    return torch.stack([b >> 4, b & 15], dim=1).flatten()[:n]


def test_nf4_matches_bitsandbytes():
    F = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    try:
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    except Exception as err:  # pragma: no cover - a build without CPU kernels
        pytest.skip(f"bitsandbytes cannot quantise on the CPU here: {err}")
    torch.testing.assert_close(F.get_4bit_type("nf4", device="cpu"), sft.nf4_codebook(), rtol=0, atol=1e-6)
    q = sft.quantize_nf4(w, double_quant=False)
    codes = q.codes.flatten().long()
    bnb_codes = _unpack_bnb(packed, w.numel()).long()
    assert (codes == bnb_codes).float().mean() > 0.999  # ties at a midpoint may round either way
    torch.testing.assert_close(q.absmax, state.absmax)
    same = (codes == bnb_codes).view(w.shape)
    torch.testing.assert_close(sft.dequantize_nf4(q)[same], F.dequantize_4bit(packed, state)[same])
    # double quantisation: both store 8-bit scales; the reconstruction error is as small as bnb's
    packed2, state2 = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    err_bnb = (F.dequantize_4bit(packed2, state2) - w).abs().mean()
    err_ours = (sft.dequantize_nf4(sft.quantize_nf4(w)) - w).abs().mean()
    assert err_ours <= 1.05 * err_bnb


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_error_bound_and_shape(double_quant):
    w = (torch.randn(33, 70, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.float32)
    w[0, 0] = 0.5  # an outlier: its block gets a large scale
    q = sft.quantize_nf4(w, double_quant=double_quant)
    w_hat = sft.dequantize_nf4(q)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    # bound: half the widest NF4 gap times the block's absmax, plus the scale's own rounding error
    code = torch.tensor(NF4_PAPER)
    half_gap = float((code[1:] - code[:-1]).max()) / 2
    flat = torch.cat([w.flatten(), torch.zeros(-w.numel() % 64)]).view(-1, 64)
    absmax = flat.abs().amax(1)
    scale_err = 0.0 if not double_quant else float(q.absmax_scale.max()) / 2
    bound = (absmax * half_gap + scale_err).repeat_interleave(64)[: w.numel()].view_as(w)
    assert ((w_hat - w).abs() <= bound + 1e-7).all()
    assert (w_hat - w).abs().mean() < 0.1 * w.abs().mean() + 1e-3  # and typically far below it
    # exact values survive: zero and each block's absmax are NF4 values times the scale
    z = torch.zeros(64)
    assert torch.equal(sft.dequantize_nf4(sft.quantize_nf4(z, double_quant=double_quant)), z)


def test_bits_per_parameter_is_the_papers_and_the_storage():
    # QLoRA: a 32-bit scale per 64 weights costs 32/64 = 0.5 bits per parameter; double
    # quantisation brings it to 8/64 + 32/(64*256) = 0.127, a saving of 0.373 bits per parameter
    assert sft.bits_per_parameter(double_quant=False) == 4.5
    assert round(sft.bits_per_parameter() - 4, 3) == 0.127
    assert round(sft.bits_per_parameter(double_quant=False) - sft.bits_per_parameter(), 3) == 0.373
    # the same figure counted from what quantize_nf4 actually stores (64 * 256 * 4 weights)
    w = torch.randn(256, 256)
    q = sft.quantize_nf4(w)
    stored = 4 * q.codes.numel() + 8 * q.absmax_codes.numel() + 32 * q.absmax_scale.numel() + 32  # + offset
    assert stored / w.numel() == pytest.approx(sft.bits_per_parameter(), abs=1e-3)


def test_nf4_bad_input():
    with pytest.raises(TypeError, match="w must"):
        sft.quantize_nf4(torch.arange(4))
    with pytest.raises(ValueError, match="blocksize"):
        sft.quantize_nf4(torch.randn(4), blocksize=0)
    with pytest.raises(TypeError, match="q must"):
        sft.dequantize_nf4(torch.randn(3))


# ----------------------------------------------------------------------------------------------
# evaluation helpers and the shipped SFT model
# ----------------------------------------------------------------------------------------------
def test_review_cross_entropy_is_transformers_loss(base):
    model, tok = base
    texts = TinyReviews().sample(20, seed=4)
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, ids))
    x = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
    labels = torch.where(x == tok.pad_token_id, -100, x)
    with torch.no_grad():
        hf = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
    assert sft.review_cross_entropy(model, tok, texts) == pytest.approx(float(hf), rel=1e-5)


def test_generate_responses_greedy_limit_is_generate(base):
    model, tok = base
    prompts = ["write a positive review about the music :", "write a very negative review about the acting :"]
    ours = sft.generate_responses(model, tok, prompts, temperature=1e-4, max_new_tokens=40)
    for p, r in zip(prompts, ours):
        ids = torch.tensor([tok(p)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        assert r == " ".join(tok.convert_ids_to_tokens(new[: new.index(tok.eos_token_id)]))
    assert sft.generate_responses(model, tok, prompts, max_new_tokens=1) == [None, None]  # no EOS yet


def test_shipped_sft_model_follows_instructions(base):
    """Fast version of `python -m rl4lmt.sft evaluate` (which uses 1,000 held-out instructions)."""
    sft_model, tok = zoo.load("tiny-reviews-sft", device="cpu")
    assert tok.get_vocab() == base[1].get_vocab()
    world = TinyReviews()
    held_out = sft.instruction_pairs(200, seed=10_001)  # never trained on: training draws use seed 0
    instructions = [p for p, _ in held_out]
    ceiling = sum(world.instruction_score(p, r) for p, r in held_out) / len(held_out)
    ev = sft.evaluate_instructions(sft_model, tok, instructions, world=world, seed=1)
    ev_base = sft.evaluate_instructions(base[0], base[1], instructions, world=world, seed=1)
    assert ev["score"] >= 0.85 * ceiling  # the full run on 1,000 instructions: see the report
    assert ev["grammatical"] >= 0.9
    assert ev_base["score"] < 0.2 * ceiling  # the pretrained model ignores the instruction
    reviews = world.sample(200, seed=7)
    floor = world.cross_entropy(reviews)
    assert sft.review_cross_entropy(base[0], base[1], reviews) < floor + 0.05
    assert sft.review_cross_entropy(sft_model, tok, reviews) > floor  # no model beats the world


# ----------------------------------------------------------------------------------------------
# prompt tuning = peft's PromptTuning
# ----------------------------------------------------------------------------------------------
def test_soft_prompt_matches_peft_and_samples_with_a_cache(base):
    from peft import PromptTuningConfig, get_peft_model

    model, tok = base
    twin = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    prompt = twin.get_prompt_embedding_to_save("default")
    ours = sft.SoftPromptLM(copy.deepcopy(model), prompt)
    assert sft.count_parameters(ours)[0] == twin.get_nb_trainable_parameters()[0] == 5 * 128
    x = torch.tensor([[0, 177, 4, 115, 124, 5, 152, 145, 3], [0, 152, 9, 165, 12, 2, 0, 178, 178]])
    am = torch.tensor([[1] * 9, [1] * 7 + [0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x, attention_mask=am).logits,
                                   twin(input_ids=x, attention_mask=am).logits[:, 5:])
    # cached, token-by-token decoding (rl4lmt.decoding) = one full forward pass on the result
    from rl4lmt.decoding import greedy

    seq = greedy(ours, x[:1], 6, eos_token_id=None)
    with torch.no_grad():
        full = ours(input_ids=seq[:, :-1]).logits.argmax(-1)[0, 8:]
    assert torch.equal(full, seq[0, 9:])
    with pytest.raises(ValueError, match="prompt"):
        sft.SoftPromptLM(model, torch.zeros(3, 7))
