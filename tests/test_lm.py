"""Tests for rl4lmt.lm: every from-scratch function against an independent reference.

References: torch's scaled_dot_product_attention, GPT-2's own attention layer and
torch.nn.MultiheadAttention (same weights), transformers' built-in LM loss (labels=...),
DistilBERT's sinusoidal embeddings and a per-element loop, brute-force per-position forward
passes, and numbers worked out by hand.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from rl4lmt import lm, set_seed


# ---------------------------------------------------------------- surprisal / perplexity
def test_surprisal_worked_numbers():
    # a coin flip is 1 bit, a 1-in-8 event 3 bits, a certain event 0 bits
    assert lm.surprisal(0.5) == pytest.approx(1.0)
    assert lm.surprisal(1 / 8) == pytest.approx(3.0)
    assert lm.surprisal(1.0) == 0.0
    assert lm.surprisal(0.0) == math.inf
    assert lm.surprisal(0.25, base=math.e) == pytest.approx(math.log(4))


def test_surprisal_kinds_and_log_input():
    p = np.array([0.1, 0.2, 0.7])
    np.testing.assert_allclose(lm.surprisal(p), -np.log2(p))
    t = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    out = lm.surprisal(t, base=10)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), -np.log10(p))
    np.testing.assert_allclose(lm.surprisal(np.log(p), log=True), -np.log2(p))


@pytest.mark.parametrize(
    "args, kwargs, arg_name",
    [((1.5,), {}, "p"), ((-0.1,), {}, "p"), ((0.5,), {"log": True}, "p"), ((0.5,), {"base": 1}, "base"),
     ((0.5,), {"base": -2}, "base"), ((float("nan"),), {}, "p")],
)
def test_surprisal_rejects_bad_input(args, kwargs, arg_name):
    with pytest.raises(ValueError, match=arg_name):
        lm.surprisal(*args, **kwargs)
    with pytest.raises(TypeError, match="p"):
        lm.surprisal("0.5")


def test_cross_entropy_and_perplexity_match_torch_cross_entropy():
    set_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    ref_targets = targets.masked_fill(mask == 0, -100)  # torch's own "ignore" convention
    ref = F.cross_entropy(logits.reshape(-1, 11), ref_targets.reshape(-1), ignore_index=-100)
    assert lm.cross_entropy(logp, mask) == pytest.approx(ref.item(), rel=1e-6)
    assert lm.cross_entropy(logp, mask, base=2) == pytest.approx(ref.item() / math.log(2), rel=1e-6)
    assert lm.perplexity(logp, mask) == pytest.approx(math.exp(ref.item()), rel=1e-6)


def test_perplexity_of_uniform_guess_is_vocab_size():
    assert lm.perplexity([math.log(1 / 7)] * 5) == pytest.approx(7.0)


def test_perplexity_rejects_bad_input():
    with pytest.raises(ValueError, match="mask"):
        lm.perplexity(torch.zeros(2, 3) - 1, torch.ones(3, 2))
    with pytest.raises(ValueError, match="logp"):
        lm.perplexity(torch.tensor([0.5, -1.0]))  # a probability passed as a log-prob
    with pytest.raises(ValueError, match="logp"):
        lm.perplexity(torch.zeros(2, 2) - 1, torch.zeros(2, 2))  # nothing to average


# ---------------------------------------------------------------- token log-probs
class WordTokenizer:
    """A minimal stand-in tokenizer with the course tokenizer's rule: BOS prepended, no EOS."""

    eos_token_id = 0
    pad_token_id = 1

    def __init__(self, words):
        self.vocab = {"<eos>": 0, "<pad>": 1, **{w: i + 2 for i, w in enumerate(words)}}

    def __call__(self, text):
        return {"input_ids": [0] + [self.vocab[w] for w in text.split()]}


@pytest.fixture(scope="module")
def tiny_lm():
    set_seed(0)
    words = "the plot music was great slow , but .".split()
    cfg = GPT2Config(vocab_size=len(words) + 2, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return GPT2LMHeadModel(cfg).eval(), WordTokenizer(words)


def test_shifted_logprobs_by_brute_force(tiny_lm):
    # reference: run the model on each prefix alone and read the next token's probability
    model, _ = tiny_lm
    ids = torch.tensor([[0, 2, 3, 5, 6, 0], [0, 4, 5, 7, 3, 1]])
    with torch.no_grad():
        got = lm.shifted_logprobs(model(ids).logits, ids)
        for b in range(2):
            for t in range(ids.shape[1] - 1):
                ref = torch.log_softmax(model(ids[b : b + 1, : t + 1]).logits[0, -1], -1)[ids[b, t + 1]]
                assert got[b, t].item() == pytest.approx(ref.item(), abs=1e-5)


def test_token_logprobs_events_and_padding(tiny_lm):
    model, tok = tiny_lm
    texts = ["the plot was great .", "the music was slow , but great ."]
    with torch.no_grad():
        out = lm.token_logprobs(model, tok, texts)
        # one scored event per word plus the end-of-text event
        assert out.mask.sum(-1).tolist() == [len(t.split()) + 1 for t in texts]
        # padding changes nothing: each text scored alone gives the same log-probs
        for i, t in enumerate(texts):
            alone = lm.token_logprobs(model, tok, [t])
            n = len(t.split()) + 1
            torch.testing.assert_close(out.logprobs[i, :n], alone.logprobs[0], atol=1e-5, rtol=0)
            assert out.targets[i, n - 1].item() == tok.eos_token_id
        assert (out.logprobs[out.mask == 0] == 0).all()


def test_teacher_forcing_loss_matches_transformers_labels_loss(tiny_lm):
    model, tok = tiny_lm
    ids, am = lm.encode_texts(tok, ["the plot was great .", "the music was slow , but the plot was great ."])
    labels = ids.masked_fill(am == 0, -100)  # transformers ignores -100 targets
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, labels=labels)
        ours = lm.teacher_forcing_loss(out.logits, ids, am)
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_train_teacher_forcing_learns_a_deterministic_language():
    set_seed(0)
    tok = WordTokenizer("a b c".split())
    ids, am = lm.encode_texts(tok, ["a b c a b c", "a b c"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    losses = lm.train_teacher_forcing(model, ids, am, steps=60, batch_size=4, lr=1e-2, seed=0, progress=False)
    assert len(losses) == 60 and losses[-1] < 0.25 * losses[0]
    set_seed(0)
    model2 = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    assert lm.train_teacher_forcing(model2, ids, am, steps=60, batch_size=4, lr=1e-2, seed=0, progress=False) == losses


def test_train_teacher_forcing_recipe_hooks():
    """The hooks zoo.train's recipe uses: its optimizer, a learning-rate schedule, clipping, a generator."""
    tok = WordTokenizer("a b c".split())
    ids, am = lm.encode_texts(tok, ["a b c a b c", "a b c", "c b a"])

    def fresh():
        set_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=5, n_embd=16, n_layer=1, n_head=2, n_positions=16))

    def moved(model, before):
        return torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before))).item()

    # SGD with the gradient norm clipped to c moves the weights by at most lr * c per step
    model = fresh()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    lm.train_teacher_forcing(model, ids, am, steps=3, batch_size=2, progress=False, max_grad_norm=0.01,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                             on_step=lambda step, mask, loss: seen.append((step, tuple(mask.shape), loss.item())))
    assert 0 < moved(model, before) <= 3 * 0.5 * 0.01 + 1e-6
    assert [s for s, _, _ in seen] == [0, 1, 2] and all(shape[0] == 2 for _, shape, _ in seen)
    # without clipping the same steps move the weights much further
    model = fresh()
    lm.train_teacher_forcing(model, ids, am, steps=3, batch_size=2, progress=False,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    assert moved(model, before) > 10 * 3 * 0.5 * 0.01
    # a schedule that says 0 leaves the weights alone
    model = fresh()
    lm.train_teacher_forcing(model, ids, am, steps=3, batch_size=2, progress=False, lr_schedule=lambda step: 0.0)
    assert moved(model, before) == 0.0
    # a seeded generator gives the batches of the same seed
    a = lm.train_teacher_forcing(fresh(), ids, am, steps=4, batch_size=2, seed=5, progress=False)
    b = lm.train_teacher_forcing(fresh(), ids, am, steps=4, batch_size=2, progress=False,
                                 generator=torch.Generator().manual_seed(5))
    assert a == b


def test_token_logprobs_rejects_bad_input(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(TypeError, match="texts"):
        lm.token_logprobs(model, tok, "the plot was great .")
    with pytest.raises(ValueError, match="texts"):
        lm.token_logprobs(model, tok, [])
    with pytest.raises(ValueError, match="logits"):
        lm.shifted_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        lm.shifted_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ---------------------------------------------------------------- attention
def _qkv(B=2, H=3, T=5, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 4, 8), (2, 3, 5, 4), (4, 2, 9, 16), (3, 1, 6, 32)])
def test_causal_self_attention_equals_sdpa(shape):
    q, k, v = _qkv(*shape, seed=sum(shape))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(lm.causal_self_attention(q, k, v), ref, atol=1e-10, rtol=0)


def test_causal_self_attention_with_padding_mask_equals_sdpa():
    q, k, v = _qkv(3, 2, 6, 8, seed=1)
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])  # right and left padding
    mask = lm.padding_mask(am) & torch.ones(6, 6, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # SDPA takes one combined mask
    got = lm.causal_self_attention(q, k, v, attn_mask=lm.padding_mask(am))
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    assert torch.isfinite(got).all()  # left-padded rows that see nothing are zeros, not NaN


def test_attention_with_float_mask_and_cross_lengths_equals_sdpa():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 3, 5, generator=g), torch.randn(2, 2, 7, 5, generator=g)
    v = torch.randn(2, 2, 7, 6, generator=g)
    bias = torch.randn(2, 1, 3, 7, generator=g)
    torch.testing.assert_close(lm.attention(q, k, v, bias), F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    torch.testing.assert_close(lm.attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_attention_weights_are_causal_distributions():
    q, k, _ = _qkv(2, 2, 5, 4)
    w = lm.attention_weights(q, k, is_causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))
    assert (w.triu(1) == 0).all()  # no weight on the future
    torch.testing.assert_close(w[..., 0, 0], torch.ones(2, 2, dtype=torch.float64))  # the first token sees only itself


def test_causal_mask_and_padding_mask():
    assert lm.causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert lm.padding_mask(torch.tensor([[1, 0]])).shape == (1, 1, 1, 2)
    with pytest.raises(ValueError, match="n"):
        lm.causal_mask(0)
    with pytest.raises(ValueError, match="attention_mask"):
        lm.padding_mask(torch.tensor([[1, 2]]))


def test_attention_rejects_bad_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q"):
        lm.causal_self_attention(q[0], k[0], v[0])  # 3-D: heads missing
    with pytest.raises(ValueError, match="k"):
        lm.causal_self_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="v"):
        lm.causal_self_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="attn_mask"):
        lm.causal_self_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="q"):
        lm.causal_self_attention(q.long(), k, v)


def test_split_and_merge_heads_round_trip():
    x = torch.randn(2, 5, 12)
    h = lm.split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])  # head 1 holds features 4..7
    torch.testing.assert_close(lm.merge_heads(h), x)
    with pytest.raises(ValueError, match="n_heads"):
        lm.split_heads(x, 5)


def test_multi_head_self_attention_equals_gpt2_attention_layer():
    # GPT-2's first attention layer, captured inside a full forward pass (with its own masks)
    set_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=20, n_embd=24, n_layer=1, n_head=4, n_positions=16)).eval()
    attn = model.h[0].attn
    seen = {}
    attn.register_forward_hook(
        lambda mod, args, kwargs, out: seen.update(x=kwargs.get("hidden_states", args[0] if args else None), y=out[0]),
        with_kwargs=True)
    ids = torch.randint(0, 20, (3, 7))
    am = torch.ones(3, 7, dtype=torch.long)
    am[1, 5:] = 0
    with torch.no_grad():
        model(input_ids=ids, attention_mask=am)
        ours = lm.multi_head_self_attention(
            seen["x"], attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight, attn.c_proj.bias, 4,
            attn_mask=lm.padding_mask(am),
        )
    real = am.bool()[:, :, None].expand_as(ours)  # padded query positions are never used
    torch.testing.assert_close(ours[real], seen["y"][real], atol=1e-5, rtol=1e-5)


def test_multi_head_self_attention_equals_torch_multihead_attention():
    set_seed(1)
    C, H, T = 16, 4, 6
    mha = torch.nn.MultiheadAttention(C, H, batch_first=True).eval()
    x = torch.randn(2, T, C)
    with torch.no_grad():
        ref, _ = mha(x, x, x, attn_mask=~lm.causal_mask(T), need_weights=False)  # torch: True = blocked
        ours = lm.multi_head_self_attention(
            x, mha.in_proj_weight.T, mha.in_proj_bias, mha.out_proj.weight.T, mha.out_proj.bias, H
        )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- positions
@pytest.mark.parametrize("n, d", [(1, 2), (7, 4), (50, 16), (128, 64), (10, 6)])
def test_sinusoidal_positions_equal_distilbert(n, d):
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    ref = create_sinusoidal_embeddings(n, d, torch.empty(n, d))
    torch.testing.assert_close(lm.sinusoidal_positions(n, d), ref, atol=1e-6, rtol=0)


def test_sinusoidal_positions_depend_on_relative_offsets_only():
    """The property the encoding is for (Vaswani et al. 2017): <PE(t), PE(t+k)> depends on k only,
    each (sin, cos) pair has unit norm, and position 0 is (0, 1, 0, 1, ...)."""
    pe = lm.sinusoidal_positions(40, 8).double()
    torch.testing.assert_close(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, torch.ones(40, 4, dtype=torch.float64))
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4, dtype=torch.float64))
    gram = pe @ pe.T
    for k in (1, 3, 10):
        diag = torch.diagonal(gram, offset=k)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=0)
    # the first pair turns by exactly one radian per position; the last one far more slowly
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert 0 < pe[1, -2].item() < 0.01


def test_sinusoidal_positions_reject_bad_input():
    with pytest.raises(ValueError, match="dim"):
        lm.sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="n_positions"):
        lm.sinusoidal_positions(0, 4)


# ---------------------------------------------------------------- BPE
def test_english_text_is_shipped():
    text = lm.english_text()
    assert 2000 < len(text.encode()) < 6000 and "lighthouse" in text


def test_train_bpe_merges_and_round_trip():
    text = lm.english_text()
    tok = lm.train_bpe([text], vocab_size=150)
    merges = lm.bpe_merges(tok)
    assert tok.get_vocab_size() <= 150 and len(merges) > 50
    vocab = tok.get_vocab()
    for a, b in merges[:40]:  # every merge produces a token of the vocabulary from two earlier ones
        assert a in vocab and b in vocab and a + b in vocab
    sentence = "the keeper climbs the stairs"
    enc = tok.encode(sentence)
    assert tok.decode(enc.ids) == sentence
    bigger = lm.train_bpe([text], vocab_size=400)
    assert len(bigger.encode(sentence).ids) <= len(enc.ids)  # a larger vocabulary needs fewer pieces


def test_bpe_applying_the_merges_by_hand_gives_the_library_tokens():
    # a from-scratch BPE encoder: apply the learned merges in order, within each word
    text = lm.english_text()
    tok = lm.train_bpe([text], vocab_size=120)
    rank = {m: i for i, m in enumerate(lm.bpe_merges(tok))}
    for word in ["lighthouse", "walking", "talked", "coastline", "boats"]:
        pieces = list("▁" + word)
        while True:
            pairs = [(rank.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
            best = min(pairs, default=(math.inf, 0))
            if best[0] == math.inf:
                break
            i = best[1]
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
        assert pieces == tok.encode(word).tokens, word


def test_train_bpe_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        lm.train_bpe(["abc"], vocab_size=0)
    with pytest.raises(TypeError, match="texts"):
        lm.train_bpe("abc", vocab_size=10)


# ---------------------------------------------------------------- the transformer block
def _tiny_gpt2(seed=0, n_layer=2):
    set_seed(seed)
    cfg = GPT2Config(vocab_size=37, n_positions=16, n_embd=24, n_layer=n_layer, n_head=3,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random layer-norm affine parameters too, so a swapped gamma/beta shows
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def test_layer_norm_matches_torch_and_has_z_scores():
    set_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 3 + 7
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    ours = lm.layer_norm(x, w, b, eps=1e-5)
    torch.testing.assert_close(ours, F.layer_norm(x, (8,), w, b, eps=1e-5))
    z = lm.layer_norm(x, torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64), eps=1e-12)
    torch.testing.assert_close(z.mean(-1), torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        lm.layer_norm(x, torch.ones(7, dtype=torch.float64), b)
    with pytest.raises(ValueError, match="eps"):
        lm.layer_norm(x, w, b, eps=0.0)


def test_gelu_tanh_matches_torch_approximate_gelu():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(lm.gelu_tanh(x), F.gelu(x, approximate="tanh"))


def test_transformer_block_matches_gpt2_block_with_the_same_weights():
    model = _tiny_gpt2()
    block = model.transformer.h[1]
    x = torch.randn(3, 9, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = block(x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        ours = lm.transformer_block(x, lm.block_weights(block), n_heads=3, eps=model.config.layer_norm_epsilon)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the feed-forward sub-layer alone is GPT-2's MLP
    with torch.no_grad():
        torch.testing.assert_close(lm.feed_forward(x, block.mlp.c_fc.weight, block.mlp.c_fc.bias,
                                                   block.mlp.c_proj.weight, block.mlp.c_proj.bias),
                                   block.mlp(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="weights"):
        lm.transformer_block(x, block, n_heads=3)
    with pytest.raises(TypeError, match="block"):
        lm.block_weights(torch.nn.Linear(2, 2))


def test_gpt2_forward_stacks_blocks_like_transformers():
    model = _tiny_gpt2(seed=2, n_layer=3)
    ids = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
        logits, hidden = lm.gpt2_forward(model, ids, return_hidden=True)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert len(hidden) == model.config.n_layer + 1
    # transformers' hidden_states: the embedding output and each block's output, except that the
    # last one has the final layer norm applied; compare the ones before it
    for ours_h, ref_h in zip(hidden[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(ours_h, ref_h, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="input_ids"):
        lm.gpt2_forward(model, ids.float())
