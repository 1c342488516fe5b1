"""The shipped tokenizer and tiny GPT-2: aligned with the world, loadable offline, and good.

Quality is measured on held-out world samples (a seed the training never used), against the
world's exact probabilities: the cross-entropy gap to the world and the grammatical rate of the
model's own samples.
"""
import os

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from rl4lmt import zoo
from rl4lmt.lm import sequence_logprob
from rl4lmt.world import EOS, TinyReviews

W = TinyReviews(seed=0)
HELD_OUT_SEED = 2024  # training uses world.sample(..., seed=TinyGPTConfig.seed) only


@pytest.fixture(scope="module")
def shipped():
    return zoo.load("tiny-reviews", device="cpu")


def test_tokenizer_ids_are_the_world_vocabulary_in_order():
    tok = zoo.build_tokenizer(W)
    assert tok.convert_tokens_to_ids(W.vocab) == list(range(len(W.vocab)))
    assert tok.eos_token == tok.bos_token == EOS and tok.eos_token_id == tok.bos_token_id == 0
    assert tok.pad_token_id == len(W.vocab) and tok.unk_token_id == len(W.vocab) + 1
    assert len(tok) == len(W.vocab) + 2


def test_tokenizer_round_trip_and_bos():
    tok = zoo.build_tokenizer(W)
    for text in W.sample(200, seed=1):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(text.split()) + 1
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.convert_ids_to_tokens(ids[1:]) == text.split()
    assert tok("the acting was great")["input_ids"][-1] == tok.unk_token_id
    assert tok("the plot", add_special_tokens=False)["input_ids"] == [W.word_to_id["the"], W.word_to_id["plot"]]


def test_shipped_checkpoint_is_small_safetensors_in_the_package(shipped):
    model, tok = shipped
    path = zoo.checkpoint_dir("tiny-reviews")
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert not (path / "pytorch_model.bin").exists()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 6e6, size
    assert isinstance(model, GPT2LMHeadModel) and isinstance(tok, PreTrainedTokenizerFast)
    assert tok.convert_tokens_to_ids(W.vocab) == list(range(len(W.vocab)))
    assert not model.training


def test_sequence_logprob_equals_a_prefix_by_prefix_loop(shipped):
    """Independent reference: score every next word with a separate forward pass on its prefix."""
    model, tok = shipped
    texts = W.sample(4, seed=5)
    fast = sequence_logprob(model, tok, texts)
    for text, got in zip(texts, fast):
        words = text.split() + [EOS]
        total = 0.0
        for i, w in enumerate(words):
            ids = torch.tensor([[0] + [W.word_to_id[x] for x in words[:i]]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
            total += logp[W.word_to_id[w]].item()
        assert got.item() == pytest.approx(total, abs=1e-4)


def test_cross_entropy_gap_to_the_world_on_held_out_samples(shipped):
    model, tok = shipped
    texts = W.sample(1500, seed=HELD_OUT_SEED)
    model_ce = -sequence_logprob(model, tok, texts).sum().item() / sum(map(W.num_events, texts))
    world_ce = W.cross_entropy(texts)
    gap = model_ce - world_ce
    print(f"held-out cross-entropy: model {model_ce:.4f}, world {world_ce:.4f}, gap {gap:.4f} nats/token")
    assert gap <= 0.10, gap
    assert gap > -0.01, gap  # a model cannot beat the truth by more than sampling noise


def test_model_samples_are_grammatical(shipped):
    model, tok = shipped
    torch.manual_seed(0)
    bos = torch.zeros((400, 1), dtype=torch.long)
    with torch.no_grad():
        out = model.generate(bos, attention_mask=torch.ones_like(bos), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=48, eos_token_id=0, pad_token_id=tok.pad_token_id)
    texts = []
    for row in out[:, 1:].tolist():
        row = row[: row.index(0)] if 0 in row else row
        texts.append(" ".join(W.vocab[i] if i < len(W.vocab) else "<pad>" for i in row))
    rate = sum(map(W.is_grammatical, texts)) / len(texts)
    print(f"grammatical rate of model samples at temperature 1: {rate:.3f}")
    assert rate >= 0.95, rate


def test_other_names_fail_offline_with_a_clear_message():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(OSError, match="tiny-reviews"):
        zoo.load("gpt2")
    with pytest.raises(TypeError, match="name"):
        zoo.load(3)


def test_training_is_reproducible_and_learns(tmp_path):
    """Same seed, same weights: two short runs of a miniature recipe agree exactly."""
    cfg = zoo.TinyGPTConfig(n_layer=1, n_head=2, n_embd=16, steps=30, batch_size=16, n_train=300,
                            warmup=5, lr=1e-2)
    r1 = zoo.train(tmp_path / "a", cfg, progress=False)
    r2 = zoo.train(tmp_path / "b", cfg, progress=False)
    m1 = GPT2LMHeadModel.from_pretrained(tmp_path / "a")
    m2 = GPT2LMHeadModel.from_pretrained(tmp_path / "b")
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1
    assert r1["losses_every_10"] == r2["losses_every_10"]
    assert r1["losses_every_10"][-1] < r1["losses_every_10"][0] - 1.0  # it learns
    # ... but not below the floor: no model beats the world's entropy rate (stated in the report)
    assert r1["final_loss_avg100"] > r1["world_entropy_rate"] > 0
    # the predicted tokens it reports are those of 30 batches of 16 real reviews (5 to 36 words + EOS)
    assert 30 * 16 * 6 <= r1["train_tokens"] <= 30 * 16 * 37


def test_shipped_rlhf_checkpoints_load_and_climb_the_reward_model():
    """tiny-reviews-ppo and -dpo (chapter 8's pipeline) load offline and left the SFT policy in the
    direction they were trained: the reward model scores their responses to instructions they never
    saw (a seed the recipes do not use) clearly higher than the SFT policy's, while staying a review."""
    from rl4lmt import ppo, reward

    rm, _ = zoo.load("tiny-reviews-rm", device="cpu")
    prompts = [x for x, _ in W.instructions(64, seed=HELD_OUT_SEED)] * 2
    mean_score, sft_params = {}, None
    for name in ("tiny-reviews-sft", "tiny-reviews-ppo", "tiny-reviews-dpo"):
        model, tok = zoo.load(name, device="cpu")
        assert isinstance(model, GPT2LMHeadModel) and (zoo.checkpoint_dir(name) / "training.json").exists()
        roll = ppo.rollout(model, tok, prompts, 30, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
        assert roll.finished.float().mean() > 0.9  # responses still end: not collapsed into run-ons
        mean_score[name] = float(reward.score(rm, tok, roll.prompts, roll.responses).mean())
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        if sft_params is None:
            sft_params = params
        else:
            assert not torch.equal(params, sft_params), name  # a trained copy, not the SFT weights
    for name in ("tiny-reviews-ppo", "tiny-reviews-dpo"):
        assert mean_score[name] > mean_score["tiny-reviews-sft"] + 0.3, mean_score
