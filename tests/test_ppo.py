"""Tests of rl4lmt.ppo against independent references.

- GAE against the discounted sum of TD errors, A_t = sum_l (gamma lam)^l delta_{t+l}, computed on
  each row's response block alone (a different algorithm from the package's backward recursion),
  and against chapter 4's returns-to-go at lam = 1;
- the KL estimators against the exact KL of small categorical distributions (unbiasedness of k1
  and k3 within standard errors), the exact per-token KL against torch.distributions;
- the clipped value loss, the KL-shaped rewards and whitening against hand loops on Python floats;
- the DPO loss against TRL DPOTrainer's loss (and gradient) on the same batch of the same model;
- end to end: on problems small enough to enumerate every response, PPO (a tiny GPT-2 on a
  2-word vocabulary) and DPO (a tabular softmax policy) reach the analytical optimum
  pi* ∝ pi_ref exp(r / beta) within a stated total-variation tolerance.
"""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
from lm_helpers import word_tokenizer

from rl4lmt import ppo
from rl4lmt.pg import discounted_returns


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10, "minibatch_size": 4}, "minibatch_size"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"kl_coef": 0.0, "target_kl": 1.0}, "target_kl"),
        ({"gamma": 1.5}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"clip_eps": 0.0}, "clip_eps"),
        ({"clip_value": -1.0}, "clip_value"),
        ({"vf_coef": -1.0}, "vf_coef"),
        ({"lr": 0.0}, "lr"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"ppo_epochs": 1.5}, "ppo_epochs"),
        ({"iterations": True}, "iterations"),
    ],
)
def test_config_rejects_bad_settings_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ppo.PPOConfig(**kwargs)


def test_config_defaults_are_valid_and_glossary_covers_the_stats():
    cfg = ppo.PPOConfig()
    assert cfg.batch_size % cfg.minibatch_size == 0
    assert all(isinstance(v, str) and v for v in ppo.STATS_GLOSSARY.values())


# ----------------------------------------------------------------------------------------------
# GAE, shaped rewards, whitening
# ----------------------------------------------------------------------------------------------
def _random_episode_batch(seed, B=5, T=9):
    """Rewards/values with a response block per row (prompt before it, padding after it).

    Values at prompt and padding positions are NOT zero: a correct GAE must ignore them.
    """
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    blocks = []
    for b in range(B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        length = int(torch.randint(1, T - start + 1, (1,), generator=g))
        mask[b, start : start + length] = 1.0
        blocks.append((start, length))
    return rewards, values, mask, blocks


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.5, 1.0), (1.0, 0.0), (0.99, 0.3)])
def test_gae_equals_discounted_sum_of_td_errors(gamma, lam):
    rewards, values, mask, blocks = _random_episode_batch(seed=int(100 * gamma + 10 * lam))
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want = torch.zeros_like(adv)
    for b, (s, n) in enumerate(blocks):
        r = rewards[b, s : s + n].tolist()
        v = values[b, s : s + n].tolist() + [0.0]  # the state after the last response token is terminal
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):  # forward sum over the future, no recursion
            want[b, s + t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, (want + values) * mask)
    assert (adv[mask == 0] == 0).all()


def test_gae_with_lambda_one_is_returns_to_go_minus_values():
    rewards, values, mask, blocks = _random_episode_batch(seed=3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    for b, (s, n) in enumerate(blocks):
        g = discounted_returns(rewards[b, s : s + n], 0.9)  # chapter 4's returns-to-go
        torch.testing.assert_close(ret[b, s : s + n], g)
        torch.testing.assert_close(adv[b, s : s + n], g - values[b, s : s + n])


def test_gae_input_checks_and_detach():
    rewards, values, mask, _ = _random_episode_batch(seed=4)
    values.requires_grad_()
    adv, ret = ppo.gae(rewards, values, mask)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="lam"):
        ppo.gae(rewards, values, mask, 1.0, 1.2)
    with pytest.raises(ValueError, match="values"):
        ppo.gae(rewards, values[:, :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        ppo.gae(rewards, values, mask[:, :-1])


def test_kl_shaped_rewards_hand_loop():
    _, _, mask, blocks = _random_episode_batch(seed=5)
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(mask.shape, generator=g) * mask
    ref = -torch.rand(mask.shape, generator=g) * mask
    scores = torch.randn(mask.shape[0], generator=g)
    beta = 0.3
    got = ppo.kl_shaped_rewards(scores, logp, ref, mask, beta)
    for b, (s, n) in enumerate(blocks):
        for t in range(mask.shape[1]):
            want = 0.0
            if s <= t < s + n:
                want = -beta * (float(logp[b, t]) - float(ref[b, t]))
                if t == s + n - 1:  # the reward model speaks once, at the final token
                    want += float(scores[b])
            assert math.isclose(float(got[b, t]), want, abs_tol=1e-6)
    # summed over a response: score - beta * log(pi(y) / pi_ref(y))
    torch.testing.assert_close(got.sum(-1), scores - beta * ((logp - ref) * mask).sum(-1))
    with pytest.raises(ValueError, match="scores"):
        ppo.kl_shaped_rewards(scores[:-1], logp, ref, mask, beta)
    with pytest.raises(ValueError, match="kl_coef"):
        ppo.kl_shaped_rewards(scores, logp, ref, mask, -1.0)


def test_whiten_over_the_whole_batch():
    rewards, _, mask, _ = _random_episode_batch(seed=6)
    x = rewards * 3 + 2
    got = ppo.whiten(x, mask)
    vals = np.array([float(v) for v, m in zip(x.flatten(), mask.flatten()) if m])
    want = (vals - vals.mean()) / vals.std(ddof=1)
    np.testing.assert_allclose(got[mask.bool()].numpy(), want, rtol=1e-5, atol=1e-5)
    assert (got[mask == 0] == 0).all()
    # rescale only: the mean stays
    kept = ppo.whiten(x, mask, shift_mean=False)[mask.bool()].numpy()
    np.testing.assert_allclose(kept, want + vals.mean(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------------------------
def test_kl_estimators_unbiased_against_exact_enumeration():
    g = torch.Generator().manual_seed(0)
    logits, ref_logits = torch.randn(6, generator=g), torch.randn(6, generator=g)
    p, q = logits.softmax(-1).double(), ref_logits.softmax(-1).double()
    exact = float((p * (p / q).log()).sum())  # KL(p || q) by enumeration of the 6 outcomes
    n = 40_000
    y = torch.multinomial(p, n, replacement=True, generator=g)
    est = ppo.kl_estimators(p.log()[y], q.log()[y])
    for k in ("k1", "k3"):  # unbiased: the sample mean is within 4 standard errors
        se = float(est[k].std()) / math.sqrt(n)
        assert abs(float(est[k].mean()) - exact) < 4 * se, (k, float(est[k].mean()), exact, se)
    assert (est["k2"] >= 0).all() and (est["k3"] >= -1e-12).all()
    assert (est["k1"] < 0).any()  # k1 can be negative for single samples
    assert float(est["k3"].std()) < float(est["k1"].std())  # the point of k3: lower variance
    # exact expectation of each estimator, by enumeration: k2's is biased
    log_rho = q.log() - p.log()
    e_k2 = float((p * 0.5 * log_rho**2).sum())
    assert abs(e_k2 - exact) > 1e-3


def test_exact_kl_per_token_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, 7, generator=g) * 2, torch.randn(3, 4, 7, generator=g) * 2
    want = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=a), torch.distributions.Categorical(logits=b)
    )
    torch.testing.assert_close(ppo.exact_kl_per_token(a, b), want)


# ----------------------------------------------------------------------------------------------
# value loss, DPO loss, adaptive KL
# ----------------------------------------------------------------------------------------------
def test_clipped_value_loss_hand_computation():
    v = torch.tensor([[1.0, 0.5, -2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.8, 0.0, -1.0, 9.0]])
    ret = torch.tensor([[2.0, 0.2, -3.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, info = ppo.clipped_value_loss(v, old, ret, mask, clip=0.3)
    # by hand, c = 0.3:
    # t0: V-R = -1, clipped V = 0.8 + 0.2 = 1.0 -> -1.0 ; max(1, 1) = 1
    # t1: V-R = 0.3, clipped V = 0.0 + 0.3 = 0.3 -> 0.1 ; max(0.09, 0.01) = 0.09
    # t2: V-R = 1.0, clipped V = -1 - 0.3 = -1.3 -> 1.7 ; max(1, 2.89) = 2.89 (clipped)
    assert math.isclose(loss.item(), 0.5 * (1.0 + 0.09 + 2.89) / 3, rel_tol=1e-6)
    assert math.isclose(info["clipfrac"], 1 / 3, rel_tol=1e-6)
    loss.backward()  # the clipped branch at t2 has no gradient (it is constant in V there)
    torch.testing.assert_close(v.grad, torch.tensor([[-1.0, 0.3, 0.0, 0.0]]) / 3)
    plain, _ = ppo.clipped_value_loss(v, old, ret, mask, clip=None)
    assert math.isclose(plain.item(), 0.5 * (1.0 + 0.09 + 1.0) / 3, rel_tol=1e-6)


def test_dpo_loss_hand_computation_and_checks():
    pc, pr = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -1.5])
    rc, rr = torch.tensor([-3.5, -1.2]), torch.tensor([-3.0, -1.0])
    beta = 0.5
    margins = [beta * ((-3.0 + 3.5) - (-4.0 + 3.0)), beta * ((-1.0 + 1.2) - (-1.5 + 1.0))]
    want = sum(math.log(1 + math.exp(-m)) for m in margins) / 2
    loss, info = ppo.dpo_loss(pc, pr, rc, rr, beta)
    assert math.isclose(float(loss), want, rel_tol=1e-6)
    assert info["accuracy"] == 1.0
    # a huge margin: logsigmoid stays finite (no log(0))
    big, _ = ppo.dpo_loss(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    assert float(big) == 0.0
    bad, _ = ppo.dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    assert math.isclose(float(bad), 1e4, rel_tol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        ppo.dpo_loss(pc, pr, rc, rr, 0.0)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        ppo.dpo_loss(pc, pr, rc, rr[:1], 0.1)


def test_dpo_loss_matches_trl_dpo_trainer(tmp_path):
    """The same batch of the same tiny model through TRL DPOTrainer.compute_loss and through ours."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rl4lmt.lm import shifted_logprobs

    tok = word_tokenizer(["a", "b", "c", "d"])
    model, ref = _tiny_gpt2(len(tok), seed=0), _tiny_gpt2(len(tok), seed=1)
    ds = Dataset.from_list([
        {"prompt": "a b", "chosen": " c d", "rejected": " d"},
        {"prompt": "c", "chosen": " a", "rejected": " b b c"},
        {"prompt": "d a c", "chosen": " b", "rejected": " a a"},
    ])
    beta = 0.3
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, beta=beta, report_to=[],
                     use_cpu=True, max_length=None, seed=0)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))  # rows: [chosen..., rejected...]
    trl_loss = trainer.compute_loss(trainer.model, batch)
    (trl_grad,) = torch.autograd.grad(trl_loss, trainer.model.transformer.wte.weight)

    def seq_logps(m):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return (shifted_logprobs(logits, batch["input_ids"]) * batch["completion_mask"][:, 1:]).sum(-1)

    logps = seq_logps(trainer.model)
    with torch.no_grad():
        ref_logps = seq_logps(ref)
    ours, _ = ppo.dpo_loss(*logps.chunk(2), *ref_logps.chunk(2), beta=beta)
    (our_grad,) = torch.autograd.grad(ours, trainer.model.transformer.wte.weight)
    torch.testing.assert_close(ours, trl_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-4, atol=1e-6)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = ppo.AdaptiveKLController(0.1, target=2.0, horizon=100)
    # KL = 3 is 50 % too high: the error is clipped to +0.2, beta *= 1 + 0.2 * 10 / 100
    assert math.isclose(ctl.update(3.0, 10), 0.1 * 1.02)
    ctl = ppo.AdaptiveKLController(0.1, target=2.0, horizon=100)
    assert math.isclose(ctl.update(1.8, 10), 0.1 * (1 - 0.1 * 0.1))
    with pytest.raises(ValueError, match="target"):
        ppo.AdaptiveKLController(0.1, target=0.0, horizon=10)


# ----------------------------------------------------------------------------------------------
# tiny LMs, the critic, rollouts
# ----------------------------------------------------------------------------------------------
def _tiny_gpt2(vocab_size, seed, n_embd=16, cls=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=1, n_head=2, n_positions=16,
                     bos_token_id=0, eos_token_id=0, pad_token_id=vocab_size - 2, num_labels=1,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return (cls or GPT2LMHeadModel)(cfg).eval()


def test_critic_from_a_reward_model_starts_at_its_scores():
    from transformers import GPT2ForSequenceClassification

    tok = word_tokenizer(["a", "b"])
    rm = _tiny_gpt2(len(tok), seed=2, cls=GPT2ForSequenceClassification)
    torch.nn.init.normal_(rm.score.weight)
    ids = torch.tensor([[0, 1, 2, 1], [0, 2, 2, 1]])
    critic = ppo.Critic(rm)
    with torch.no_grad():
        values = critic(ids, torch.ones_like(ids))
        for L in (2, 3, 4):  # V of the state ending at position L-1 = the RM's score of that prefix
            torch.testing.assert_close(values[:, L - 1], rm(input_ids=ids[:, :L]).logits.squeeze(-1))
    # a copy: training the critic leaves the reward model alone
    assert critic.head.weight.data_ptr() != rm.score.weight.data_ptr()
    lm_critic = ppo.Critic(_tiny_gpt2(len(tok), seed=3))
    assert float(lm_critic(ids).abs().max()) == 0.0  # a fresh head starts at V = 0
    with pytest.raises(TypeError, match="model"):
        ppo.Critic(torch.nn.Linear(2, 2))


def test_rollout_layout_and_logprobs():
    from rl4lmt.lm import shifted_logprobs

    tok = word_tokenizer(["a", "b", "c"])
    model = _tiny_gpt2(len(tok), seed=4)
    prompts = ["a", "a b", "", "c c a", "b"]
    g = torch.Generator().manual_seed(0)
    roll = ppo.rollout(model, tok, prompts, max_new_tokens=4, generator=g)
    again = ppo.rollout(model, tok, prompts, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert roll.responses == again.responses  # seeded by the generator
    for i, p in enumerate(prompts):
        n_resp = int(roll.response_mask[i].sum())
        n_words = len(roll.responses[i].split()) if roll.responses[i] else 0
        assert n_resp == n_words + int(roll.finished[i])  # one action per word, + the EOS
        assert n_resp <= 4
        n_prompt = len(p.split()) + 1  # BOS + words
        assert int(roll.attention_mask[i].sum()) == n_prompt + n_resp
        first = int(roll.response_mask[i].nonzero()[0])
        assert first == n_prompt - 1  # target index n_prompt - 1 predicts the first response token
    # scored log-probs of the response = the unpadded text scored alone, response positions only
    with torch.no_grad():
        logits = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask).logits
        lp = shifted_logprobs(logits, roll.input_ids)
    for i, p in enumerate(prompts):
        n_prompt = len(tok(p)["input_ids"])
        ids = roll.input_ids[i][roll.attention_mask[i].bool()].tolist()  # prompt + response, no padding
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        want = sum(float(logits[j, ids[j + 1]]) for j in range(n_prompt - 1, len(ids) - 1))
        assert math.isclose(float((lp[i] * roll.response_mask[i]).sum()), want, abs_tol=1e-5)


# ----------------------------------------------------------------------------------------------
# end to end: the analytical optimum pi* ∝ pi_ref exp(r / beta)
# ----------------------------------------------------------------------------------------------
def _all_responses(vocab_ids, eos, max_new_tokens):
    """Every response of at most max_new_tokens tokens: ended by EOS, or cut off at the budget."""
    out = []
    for L in range(max_new_tokens + 1):
        for body in itertools.product([v for v in vocab_ids if v != eos], repeat=L):
            if L < max_new_tokens:
                out.append((list(body) + [eos], True))
            else:
                out.append((list(body), False))
    return out


@torch.no_grad()
def _exact_response_probs(model, responses):
    probs = []
    for tokens, _ in responses:
        ids = torch.tensor([[0] + tokens])
        logp = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].log_softmax(-1)
        probs.append(math.exp(sum(float(logp[j, ids[0, j + 1]]) for j in range(len(tokens)))))
    return np.array(probs)


def test_ppo_reaches_the_kl_regularised_optimum_on_an_enumerable_lm():
    """A tiny GPT-2 over {a, b} (+ pad, unk that a random model may also emit), responses of at most
    2 tokens: 21 possible responses, each probability computed exactly. PPO with beta = 0.5 must end
    within KL(pi || pi*) < 0.02 nats and total variation 0.1 of pi* ∝ pi_ref exp(r / beta) (the
    sampling noise of 128 rollouts per iteration keeps it from landing exactly; the objective is
    flat near its top); at the start KL(pi_ref || pi*) > 1 and the total variation > 0.5.

    The KL to pi* is read off the objective: J(pi) = E_pi[r] - beta KL(pi || pi_ref)
    = beta log Z - beta KL(pi || pi*), so KL(pi || pi*) = (J(pi*) - J(pi)) / beta; we compute it
    directly from the enumerated probabilities."""
    torch.set_num_threads(1)
    tok = word_tokenizer(["a", "b"])
    policy = _tiny_gpt2(len(tok), seed=0)
    ref = copy.deepcopy(policy)
    words = {"a": 1.0, "b": -0.5}

    def reward(prompts, responses):  # +1 per "a", -0.5 per "b", -1 for anything else
        return [sum(words.get(w, -1.0) for w in r.split()) for r in responses]

    responses = _all_responses(list(range(len(tok))), 0, 2)
    assert len(responses) == 1 + 4 + 16
    texts = [" ".join(tok.convert_ids_to_tokens(t[:-1] if fin else t)) for t, fin in responses]
    r = np.array(reward(None, texts))
    beta = 0.5
    p_ref = _exact_response_probs(ref, responses)
    assert math.isclose(p_ref.sum(), 1.0, rel_tol=1e-5)
    target = p_ref * np.exp(r / beta)
    target /= target.sum()
    tv_start = 0.5 * np.abs(p_ref - target).sum()
    assert tv_start > 0.5 and (p_ref * np.log(p_ref / target)).sum() > 1.0

    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    critic = ppo.Critic(policy)
    critic_before = {n: p.detach().clone() for n, p in critic.named_parameters()}
    cfg = ppo.PPOConfig(iterations=30, batch_size=128, minibatch_size=32, max_new_tokens=2, kl_coef=beta,
                        normalize_reward=False,  # normalising rescales r, which moves the optimum
                        lam=1.0, lr=3e-3, critic_lr=3e-3, ppo_epochs=4, seed=0)
    hist = ppo.train_ppo(policy, ref, tok, reward, [""], cfg, critic=critic, progress=False)
    p_final = _exact_response_probs(policy, responses)
    tv_end = 0.5 * np.abs(p_final - target).sum()
    kl_end = (p_final * np.log(p_final / target)).sum()
    assert kl_end < 0.02 and tv_end < 0.1, (kl_end, tv_end)
    assert set(ppo.STATS_GLOSSARY) - {"reward/gold"} == set(hist[-1])
    # every trainable parameter moved (TRL's trainer tests check the same)
    for n, p in policy.named_parameters():
        assert not torch.equal(p, before[n]), n
    for n, p in critic.named_parameters():
        assert not torch.equal(p, critic_before[n]), n


def test_train_ppo_callback_stops_and_adaptive_beta_moves():
    tok = word_tokenizer(["a", "b"])
    policy = _tiny_gpt2(len(tok), seed=5)
    ref = copy.deepcopy(policy)
    seen = []
    cfg = ppo.PPOConfig(iterations=5, batch_size=8, minibatch_size=4, max_new_tokens=3, kl_coef=0.1, target_kl=1e-3,
                        ppo_epochs=1, lr=1e-2, missing_eos_penalty=-1.0, seed=0)
    hist = ppo.train_ppo(policy, ref, tok, lambda p, r: [float(len(x)) for x in r], ["a", "b a"], cfg,
                         callback=lambda i, stats: seen.append(i) or i == 1, progress=False)
    assert seen == [0, 1] and len(hist) == 2  # returning True stops after that iteration
    assert hist[0]["kl/coef"] == 0.1 and hist[1]["kl/coef"] != 0.1  # the controller moved beta
    with pytest.raises(TypeError, match="config"):
        ppo.train_ppo(policy, ref, tok, lambda p, r: [0.0] * len(r), ["a"], {"iterations": 1})
    with pytest.raises(ValueError, match="reward_fn"):
        ppo.train_ppo(policy, ref, tok, lambda p, r: [0.0], ["a"], cfg, progress=False)


def test_dpo_reaches_the_kl_regularised_optimum_on_a_tabular_policy():
    """A softmax policy over 6 responses, preferences from Bradley-Terry with reward r: minimising
    the population DPO loss (every ordered pair, weighted by its preference probability) must give
    pi* ∝ pi_ref exp(r / beta) within total variation 1e-3."""
    g = torch.Generator().manual_seed(0)
    K, beta = 6, 0.5
    ref_logits = torch.randn(K, generator=g, dtype=torch.float64)
    r = torch.randn(K, generator=g, dtype=torch.float64)
    theta = ref_logits.clone().requires_grad_()
    i, j = torch.tensor([(a, b) for a in range(K) for b in range(K) if a != b]).T
    weight = torch.sigmoid(r[i] - r[j])  # P(i preferred over j) under Bradley-Terry
    opt = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    ref_logp = ref_logits.log_softmax(-1)

    def closure():
        opt.zero_grad()
        logp = theta.log_softmax(-1)
        # the population loss: each ordered pair (chosen a, rejected b) weighted by P(a > b)
        loss = sum(w * ppo.dpo_loss(logp[a : a + 1], logp[b : b + 1], ref_logp[a : a + 1], ref_logp[b : b + 1], beta)[0]
                   for w, a, b in zip(weight, i.tolist(), j.tolist()))
        loss.backward()
        return loss

    opt.step(closure)
    target = (ref_logp + r / beta).softmax(-1)
    tv = 0.5 * float((theta.detach().softmax(-1) - target).abs().sum())
    assert tv < 1e-3, tv
    assert 0.5 * float((ref_logits.softmax(-1) - target).abs().sum()) > 0.1
