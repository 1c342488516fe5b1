"""Tests of rl4lmt.pg against independent references.

- returns, losses and advantages against brute-force loops written from the equations;
- the REINFORCE estimator against the *exact* gradient of small problems whose expected return is
  a closed-form sum (a 3-armed bandit, a two-step MDP, a tiny language model with every sequence
  enumerated), within a tolerance of a few standard errors (stated in each test);
- PPO's clipped loss against an elementwise formula and against TRL's RLOOTrainer loss;
- the LM rollouts against rl4lmt.lm.token_logprobs and the model's own softmax.
"""
import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lm_helpers import word_tokenizer

import rl4lmt
from rl4lmt import pg


# ----------------------------------------------------------------------------------------------
# returns
# ----------------------------------------------------------------------------------------------
def brute_returns(rewards, gamma):
    T = len(rewards)
    return [sum(gamma ** (k - t) * rewards[k] for k in range(t, T)) for t in range(T)]


def test_discounted_returns_worked_example():
    # Spinning Up's discount_cumsum example: 1 + .5 (1 + .5 * 1) = 1.75
    torch.testing.assert_close(pg.discounted_returns([1.0, 1.0, 1.0], 0.5), torch.tensor([1.75, 1.5, 1.0]))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
def test_discounted_returns_brute_force(gamma):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(4, 7))
    got = pg.discounted_returns(torch.tensor(r), gamma)
    want = torch.tensor([brute_returns(list(row), gamma) for row in r])
    torch.testing.assert_close(got, want)
    # 1-D input, one step
    torch.testing.assert_close(pg.discounted_returns(torch.tensor([2.5]), gamma), torch.tensor([2.5]))


def test_discounted_returns_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        pg.discounted_returns([1.0], 1.5)
    with pytest.raises(TypeError, match="gamma"):
        pg.discounted_returns([1.0], "0.9")
    with pytest.raises(ValueError, match="rewards"):
        pg.discounted_returns(torch.tensor(1.0), 0.9)
    with pytest.raises(ValueError, match="rewards"):
        pg.discounted_returns([1.0, float("nan")], 0.9)
    with pytest.raises(TypeError, match="rewards"):
        pg.discounted_returns("1 2 3", 0.9)


# ----------------------------------------------------------------------------------------------
# REINFORCE loss: brute force, stop-gradient
# ----------------------------------------------------------------------------------------------
def test_reinforce_loss_gradient_brute_force():
    torch.manual_seed(0)
    m, T, A = 3, 5, 4
    logits = torch.randn(m, T, A, requires_grad=True)
    actions = torch.randint(0, A, (m, T))
    G = torch.randn(m, T)
    b = torch.randn(m, T)
    mask = torch.ones(m, T)
    mask[0, 3:] = 0
    logp = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    loss = pg.reinforce_loss(logp, G, b, mask=mask)
    (grad,) = torch.autograd.grad(loss, logits)
    # brute force: -1/m sum_i sum_t (G - b) * d log pi(a|s) / d logits = (G - b) (onehot - softmax)
    probs = torch.softmax(logits.detach(), -1)
    want = torch.zeros(m, T, A)
    for i in range(m):
        for t in range(T):
            if mask[i, t]:
                onehot = F.one_hot(actions[i, t], A).float()
                want[i, t] = -(G[i, t] - b[i, t]) * (onehot - probs[i, t]) / m
    torch.testing.assert_close(grad, want)


def test_reinforce_loss_stops_gradient_into_weights():
    logp = torch.log(torch.tensor([0.2, 0.5, 0.9])).requires_grad_()
    baseline = torch.tensor([0.3, 0.3, 0.3], requires_grad=True)
    returns = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    pg.reinforce_loss(logp, returns, baseline).backward()
    assert baseline.grad is None and returns.grad is None  # the weight is a constant
    torch.testing.assert_close(logp.grad, -(returns - baseline).detach())  # one episode: m = 1


def test_reinforce_loss_bad_input():
    logp = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="broadcast"):
        pg.reinforce_loss(logp, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="mask"):
        pg.reinforce_loss(logp, torch.zeros(2, 3), mask=torch.ones(3))
    with pytest.raises(TypeError, match="logprobs"):
        pg.reinforce_loss([0.0, 1.0], torch.zeros(2))
    with pytest.raises(ValueError, match="logprobs"):
        pg.reinforce_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


# ----------------------------------------------------------------------------------------------
# The estimator against exact gradients
# ----------------------------------------------------------------------------------------------
BANDIT_MEANS = torch.tensor([1.0, 2.0, -1.0])


def _bandit_samples(theta, n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.multinomial(torch.softmax(theta.detach(), -1), n, replacement=True, generator=g)
    r = BANDIT_MEANS[a] + torch.randn(n, generator=g)  # noisy rewards around the arm's mean
    return a, r


def _exact_bandit_gradient(theta):
    th = theta.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad((torch.softmax(th, -1) * BANDIT_MEANS).sum(), th)  # J = sum_a pi(a) r(a)
    return grad


def _per_sample_grads(theta, a, w):
    # d/dtheta [w log pi(a)] = w (onehot(a) - pi), for the standard error of the estimate
    return w[:, None] * (F.one_hot(a, 3).float() - torch.softmax(theta.detach(), -1))


@pytest.mark.parametrize("baseline", ["none", "leave_one_out"])
def test_reinforce_estimator_matches_exact_bandit_gradient(baseline):
    """Mean of the REINFORCE estimate = exact gradient, within 4 standard errors per coordinate."""
    theta = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    n, m = 200_000, 4  # m samples per batch for the leave-one-out baseline
    a, r = _bandit_samples(theta, n, seed=1)
    logp = torch.log_softmax(theta, -1)[a]
    if baseline == "none":
        b = torch.zeros(n)
    else:
        b = pg.leave_one_out_baseline(r.view(-1, m).T).T.reshape(-1)  # within each batch of m
    loss = pg.reinforce_loss(logp[:, None], r[:, None], b[:, None])  # n one-step episodes
    (est,) = torch.autograd.grad(-loss, theta)
    per = _per_sample_grads(theta, a, r - b).view(-1, m, 3).mean(1)  # independent batches
    se = per.std(0) / math.sqrt(per.shape[0])
    exact = _exact_bandit_gradient(theta)
    assert torch.all((est - exact).abs() < 4 * se), (est, exact, se)


def test_batch_mean_baseline_shrinks_the_gradient_by_m_minus_1_over_m():
    """Including a sample's own reward in its baseline biases the estimate by the factor (m-1)/m."""
    theta = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    n, m = 200_000, 2
    a, r = _bandit_samples(theta, n, seed=2)
    b = pg.batch_mean_baseline(r.view(-1, m).T).T.reshape(-1)
    per = _per_sample_grads(theta, a, r - b).view(-1, m, 3).mean(1)
    est, se = per.mean(0), per.std(0) / math.sqrt(per.shape[0])
    exact = _exact_bandit_gradient(theta)
    assert torch.all((est - exact * (m - 1) / m).abs() < 4 * se)
    assert not torch.all((est - exact).abs() < 4 * se)  # and the bias is detectable


def test_leave_one_out_and_batch_mean_formulas():
    g = torch.tensor([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])
    torch.testing.assert_close(pg.leave_one_out_baseline(g), torch.tensor([[4.0, 40.0], [3.5, 35.0], [1.5, 15.0]]))
    torch.testing.assert_close(pg.batch_mean_baseline(g), torch.tensor([[3.0, 30.0]] * 3))
    with pytest.raises(ValueError, match="at least 2"):
        pg.leave_one_out_baseline(torch.ones(1, 3))
    a = pg.normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert abs(float(a.mean())) < 1e-6 and abs(float(a.std()) - 1) < 1e-6


def test_returns_to_go_estimator_matches_exact_two_step_mdp_gradient():
    """A two-step MDP: s0 --a0--> s_{1+a0} --a1--> end; J = sum over the 4 trajectories.

    The estimator with weights gamma^t G_t (returns-to-go) must agree with autograd on the exact
    J within 4 standard errors; with gamma = 0.8 the gamma^t factor matters.
    """
    gamma = 0.8
    theta = torch.tensor([[0.2, -0.4], [0.5, 0.0], [-0.3, 0.6]], requires_grad=True)  # logits[state, action]
    r0 = torch.tensor([1.0, 0.0])  # R_1 after a0
    r1 = torch.tensor([[0.0, 2.0], [3.0, -1.0]])  # R_2 after (s1, a1), s1 in {1, 2}
    pi = torch.softmax(theta, -1)
    exact_J = sum(
        pi[0, a0] * pi[1 + a0, a1] * (r0[a0] + gamma * r1[a0, a1]) for a0 in range(2) for a1 in range(2)
    )
    (exact,) = torch.autograd.grad(exact_J, theta)
    n = 100_000
    g = torch.Generator().manual_seed(3)
    a0 = torch.multinomial(pi[0].detach(), n, replacement=True, generator=g)
    p1 = pi.detach()[1 + a0]
    a1 = torch.multinomial(p1, 1, generator=g).squeeze(1)
    rewards = torch.stack([r0[a0], r1[a0, a1]], 1)  # (n, 2)
    logp_all = torch.log_softmax(theta, -1)
    logp = torch.stack([logp_all[0, a0], logp_all[1 + a0, a1]], 1)  # (n, 2)
    G = pg.discounted_returns(rewards, gamma)
    weights = G * gamma ** torch.arange(2.0)  # gamma^t G_t
    (est,) = torch.autograd.grad(-pg.reinforce_loss(logp, weights), theta)
    # standard error from per-episode gradients (vectorised by the chain rule on logits)
    per = torch.zeros(n, 3, 2)
    eye = torch.eye(2)
    per[torch.arange(n), 0] += weights[:, :1] * (eye[a0] - pi.detach()[0])
    per[torch.arange(n), 1 + a0] += weights[:, 1:] * (eye[a1] - p1)
    se = per.std(0) / math.sqrt(n)
    assert torch.all((est - exact).abs() < 4 * se + 1e-6), (est, exact, se)


# ----------------------------------------------------------------------------------------------
# actor-critic pieces
# ----------------------------------------------------------------------------------------------
def test_td_advantages_brute_force():
    rng = np.random.default_rng(4)
    r, v = rng.normal(size=6), rng.normal(size=6)
    for gamma, last in ((0.9, 0.0), (0.95, 1.7)):
        want = [r[t] + gamma * (v[t + 1] if t + 1 < 6 else last) - v[t] for t in range(6)]
        got = pg.td_advantages(torch.tensor(r), torch.tensor(v), gamma, last_value=last)
        torch.testing.assert_close(got, torch.tensor(want))
    with pytest.raises(ValueError, match="values"):
        pg.td_advantages(torch.zeros(3), torch.zeros(4))


def test_value_loss_brute_force_and_shape_check():
    v = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    y = torch.tensor([0.0, 2.0, 1.0])
    loss = pg.value_loss(v, y)
    assert math.isclose(loss.item(), 0.5 * (1 + 0 + 9) / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        pg.value_loss(v[:, None], y)  # (3, 1) against (3,) must not broadcast to (3, 3)


def test_mlp_policy_and_value_shapes():
    pol, val = pg.MLPPolicy(4, 2), pg.MLPValue(4)
    obs = torch.randn(5, 7, 4)
    assert pol(obs).shape == (5, 7, 2) and val(obs).shape == (5, 7)
    # small last layer: the initial policy is close to uniform
    assert torch.allclose(pol.dist(obs).probs, torch.full((5, 7, 2), 0.5), atol=0.05)
    with pytest.raises(ValueError, match="n_actions"):
        pg.MLPPolicy(4, 0)


# ----------------------------------------------------------------------------------------------
# gymnasium: REINFORCE on CartPole
# ----------------------------------------------------------------------------------------------
def test_collect_episodes_and_smoke():
    import gymnasium as gym

    envs = [gym.make("CartPole-v1", max_episode_steps=30) for _ in range(3)]
    rl4lmt.set_seed(0)
    eps = pg.collect_episodes(envs, pg.MLPPolicy(4, 2), seeds=[0, 1, 2])
    for e in eps:
        T = len(e.rewards)
        assert e.obs.shape == (T, 4) and e.actions.shape == (T,) and e.last_obs.shape == (4,)
        assert torch.all(e.rewards == 1.0)  # CartPole: +1 per step
        assert e.terminated == (T < 30)
    for method in ("reinforce", "baseline", "actor_critic"):
        h = pg.train_reinforce(method=method, iterations=2, episodes_per_iteration=2, seed=0, progress=False)
        assert h.shape == (4,) and np.all(h >= 1)
    with pytest.raises(ValueError, match="method"):
        pg.train_reinforce(method="dqn")


@pytest.mark.slow
def test_reinforce_with_baseline_learns_cartpole():
    """Mean return of the last 16 episodes well above the first 16 (random policy: about 20)."""
    h = pg.train_reinforce(method="baseline", iterations=20, episodes_per_iteration=8, seed=0,
                           max_episode_steps=100, progress=False)
    assert h[-16:].mean() > h[:16].mean() + 30, (h[:16].mean(), h[-16:].mean())
    h2 = pg.train_reinforce(method="baseline", iterations=3, episodes_per_iteration=8, seed=0,
                            max_episode_steps=100, progress=False)
    np.testing.assert_array_equal(h[:24], h2)  # seeded: the same numbers again


# ----------------------------------------------------------------------------------------------
# PPO's clipped objective
# ----------------------------------------------------------------------------------------------
def test_ppo_clip_loss_elementwise_brute_force():
    torch.manual_seed(5)
    logp = (torch.randn(40) * 0.3).requires_grad_()
    old = torch.randn(40) * 0.3
    adv = torch.randn(40)
    eps = 0.2
    loss, info = pg.ppo_clip_loss(logp, old, adv, clip_eps=eps)
    vals, clipped = [], 0
    for lp, o, a in zip(logp.tolist(), old.tolist(), adv.tolist()):
        ratio = math.exp(lp - o)
        vals.append(min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a))
        clipped += abs(ratio - 1) > eps
    assert math.isclose(loss.item(), -sum(vals) / 40, rel_tol=1e-5)
    assert math.isclose(info["clipfrac"], clipped / 40, abs_tol=1e-6)
    ratio = np.exp(logp.detach().numpy() - old.numpy())
    assert math.isclose(info["approx_kl"], float(np.mean(ratio - 1 - np.log(ratio))), rel_tol=1e-4)
    # where the clipped branch is active, no gradient flows
    loss.backward()
    r = torch.exp(logp.detach() - old)
    inactive = ((r > 1 + eps) & (adv > 0)) | ((r < 1 - eps) & (adv < 0))
    assert inactive.any() and torch.all(logp.grad[inactive] == 0)
    assert torch.all(logp.grad[~inactive] != 0)


def test_ppo_clip_loss_gradient_at_old_policy_is_policy_gradient():
    logp = torch.tensor([-0.5, -1.2, -2.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, info = pg.ppo_clip_loss(logp, logp.detach(), adv)
    loss.backward()
    lp2 = logp.detach().clone().requires_grad_()
    pg.reinforce_loss(lp2[:, None], adv[:, None]).backward()  # -mean_t A_t log pi
    torch.testing.assert_close(logp.grad, lp2.grad)
    assert info["clipfrac"] == 0.0 and abs(info["approx_kl"]) < 1e-7


def test_ppo_clip_loss_matches_trl_rloo_loss():
    """TRL 1.x has no standalone clipped-loss function: its RLOOTrainer._compute_loss holds it.

    We call that method on a stand-in ``self`` that returns our per-token log-probs; RLOO's ratio
    is per sequence (sum of token log-probs), so our loss on sequence log-probs must agree.
    """
    from trl.trainer.rloo_trainer import RLOOTrainer

    torch.manual_seed(6)
    B, T, eps = 16, 5, 0.2
    per_token = (torch.randn(B, T) * 0.2).requires_grad_()
    mask = (torch.rand(B, T) > 0.2).float()
    old = (per_token.detach() * mask).sum(1) + torch.randn(B) * 0.3
    adv = torch.randn(B)
    identity = SimpleNamespace(
        gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x
    )
    stub = SimpleNamespace(
        epsilon_low=eps, epsilon_high=eps, aux_loss_enabled=False, model=SimpleNamespace(training=True),
        accelerator=identity, _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token, torch.zeros(B, T), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "old_logps": old, "advantages": adv,
    }
    trl_loss = RLOOTrainer._compute_loss(stub, None, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, per_token)
    ours, _ = pg.ppo_clip_loss((per_token * mask).sum(1), old, adv, clip_eps=eps)
    (our_grad,) = torch.autograd.grad(ours, per_token)
    torch.testing.assert_close(ours, trl_loss)
    torch.testing.assert_close(our_grad, trl_grad)


def test_ppo_clip_loss_bad_input():
    lp = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="clip_eps"):
        pg.ppo_clip_loss(lp, torch.zeros(3), torch.zeros(3), clip_eps=0)
    with pytest.raises(ValueError, match="advantages"):
        pg.ppo_clip_loss(lp, torch.zeros(3), torch.zeros(4))


# ----------------------------------------------------------------------------------------------
# A language model as a policy (tiny random GPT-2s with a word-level tokenizer built here)
# ----------------------------------------------------------------------------------------------
def _tiny_gpt2(vocab_size, seed, n_embd=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=1, n_head=2, n_positions=32,
                     bos_token_id=0, eos_token_id=0, pad_token_id=vocab_size - 2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def world_lm():
    from rl4lmt.world import TinyReviews

    world = TinyReviews()
    tok = word_tokenizer(world.vocab[1:])
    return world, tok, _tiny_gpt2(len(tok), seed=0, n_embd=32)


def test_rollouts_logprobs_match_teacher_forcing(world_lm):
    from rl4lmt.lm import token_logprobs

    world, tok, model = world_lm
    rl4lmt.set_seed(0)
    roll = pg.sample_rollouts(model, tok, 16, max_new_tokens=6)
    lp = pg.response_logprobs(model, roll)
    fin = roll.finished.nonzero().flatten().tolist()
    assert fin and len(fin) < 16  # some ended with EOS, some were cut off
    ref = token_logprobs(model, tok, [roll.texts[i] for i in fin]).logprobs.sum(-1)
    torch.testing.assert_close(lp[fin].sum(-1), ref, rtol=1e-5, atol=1e-5)
    for i, text in enumerate(roll.texts):  # one action per word, plus the EOS if it ended
        assert int(roll.response_mask[i].sum()) == len(text.split()) + int(roll.finished[i])
    # with a prompt, the prompt tokens are context, not actions
    roll = pg.sample_rollouts(model, tok, 4, prompt="the plot", max_new_tokens=3)
    assert all(t.startswith("the plot") for t in roll.texts)
    assert torch.all(roll.response_mask[:, :2] == 0)


def test_rollouts_sample_the_full_softmax(world_lm):
    """First-token frequencies match the model's softmax (no top-k/top-p filter), in total variation."""
    world, tok, model = world_lm
    rl4lmt.set_seed(1)
    n = 6000
    roll = pg.sample_rollouts(model, tok, n, max_new_tokens=1)
    freq = torch.bincount(roll.input_ids[:, 1], minlength=len(tok)).float() / n
    with torch.no_grad():
        probs = torch.softmax(model(torch.zeros(1, 1, dtype=torch.long)).logits[0, -1], -1)
    tv = 0.5 * (freq - probs).abs().sum()
    # E[TV] of 6000 draws over ~180 near-uniform outcomes is about 0.07; top_k=50 would give ~0.7
    assert tv < 0.12, float(tv)


def test_sequence_kl_and_exact_token_kl(world_lm):
    world, tok, model = world_lm
    ref = _tiny_gpt2(len(tok), seed=1, n_embd=32)
    rl4lmt.set_seed(2)
    roll = pg.sample_rollouts(model, tok, 400, max_new_tokens=4)
    with torch.no_grad():
        lp, rlp = pg.response_logprobs(model, roll), pg.response_logprobs(ref, roll)
        logits = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask).logits[:, :-1]
        ref_logits = ref(input_ids=roll.input_ids, attention_mask=roll.attention_mask).logits[:, :-1]
    kl = pg.sequence_kl(lp, rlp, roll.response_mask)
    # reference: log pi(y) - log pi_ref(y) of each response text, scored by rl4lmt.lm's teacher
    # forcing (its own tokenisation, padding and shift), with the EOS where the rollout ended
    from rl4lmt.lm import token_logprobs

    checked = 0
    for ended in (True, False):
        rows = [i for i in range(400) if bool(roll.finished[i]) == ended and "<" not in roll.texts[i]]
        texts = [roll.texts[i] for i in rows]
        with torch.no_grad():
            want = (token_logprobs(model, tok, texts, add_eos=ended).logprobs.sum(-1)
                    - token_logprobs(ref, tok, texts, add_eos=ended).logprobs.sum(-1))
        torch.testing.assert_close(kl[rows], want.to(kl), rtol=1e-4, atol=1e-4)
        checked += len(rows)
    assert checked > 300, checked
    torch.testing.assert_close(pg.sequence_kl(lp, lp, roll.response_mask), torch.zeros(400))
    exact = pg.exact_token_kl(logits, ref_logits, roll.response_mask)
    # each term against torch's kl_div (KL(p || q) with input = log q, target = log p)
    per_tok = F.kl_div(torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1), log_target=True,
                       reduction="none").sum(-1)
    torch.testing.assert_close(exact, (per_tok * roll.response_mask).sum(-1), rtol=1e-4, atol=1e-5)
    # same expectation (chain rule of KL), within 4 standard errors of the difference
    d = kl - exact
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(400) + 1e-6
    assert torch.all(exact >= -1e-6)


@pytest.mark.parametrize("reward_scale, kl_coef", [(1.0, 0.0), (0.0, 1.0)])
def test_reinforce_lm_step_matches_exact_gradient(reward_scale, kl_coef):
    """A 2-word vocabulary (+ <pad>, <unk>) and at most 2 new tokens: 21 sequences, J enumerated exactly.

    J(theta) = sum_y pi(y) [R(y) - beta log(pi(y) / pi_ref(y))]; the step's gradient (averaged over
    a batch of 30000 rollouts) must match -dJ/dtheta to a relative L2 error below 0.08 (the
    estimate's own noise is about 0.02 here). The second case has no reward, so its whole
    gradient is the KL penalty's: a missing or sign-flipped KL term gives an error of 1 or 2.
    """
    tok = word_tokenizer(["a", "b"])
    V = len(tok)  # <eos>, a, b, <pad>, <unk>: a random model can emit every one of them
    policy = _tiny_gpt2(V, seed=3, n_embd=8)
    ref = _tiny_gpt2(V, seed=4, n_embd=8)

    def reward_fn(texts):  # any reward of the text; truncated texts are scored like the others
        return [reward_scale * (t.count("a") - 0.5 * t.count("b") - 2.0 * t.count("<") + (t == "")) for t in texts]

    # enumerate: y = EOS, or x EOS, or x y (cut off after 2 tokens), for non-EOS tokens x, y
    words = tok.convert_ids_to_tokens(list(range(V)))
    seqs = [[0]] + [[x, 0] for x in range(1, V)] + [[x, y] for x in range(1, V) for y in range(1, V)]
    texts = [" ".join(words[t] for t in s if t) for s in seqs]

    def seq_logp(model):
        out = []
        for s in seqs:
            ids = torch.tensor([[0] + s])
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
            out.append(lp)
        return torch.stack(out)

    lp = seq_logp(policy)
    with torch.no_grad():
        ref_lp = seq_logp(ref)
    R = torch.tensor(reward_fn(texts))
    J = (lp.exp() * (R - kl_coef * (lp - ref_lp))).sum()
    params = [p for p in policy.parameters()]
    exact = torch.autograd.grad(J, params)
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-5)  # the 21 sequences are everything

    opt = torch.optim.SGD(policy.parameters(), lr=0.0)  # lr 0: keep the policy, read the gradient
    rl4lmt.set_seed(7)
    stats = pg.reinforce_lm_step(policy, ref, tok, reward_fn, opt, batch_size=30_000, kl_coef=kl_coef,
                                 max_new_tokens=2)
    est = torch.cat([(-p.grad).flatten() for p in params])
    ex = torch.cat([g.flatten() for g in exact])
    rel = float((est - ex).norm() / ex.norm())
    assert rel < 0.08, rel
    assert set(stats) >= {"reward", "kl", "return", "loss", "finished", "texts"}


def test_train_reinforce_lm_smoke(world_lm):
    world, tok, model = world_lm
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    before = [p.detach().clone() for p in policy.parameters()]
    # a random model rarely ends a review within 5 tokens (gold reward -1 for all: no signal), so
    # the smoke test rewards something that always varies: the length in characters
    hist = pg.train_reinforce_lm(policy, ref, tok, lambda ts: [len(t) / 10 for t in ts], steps=2,
                                 batch_size=8, kl_coef=0.1, max_new_tokens=5, progress=False)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))  # ref frozen
    with pytest.raises(ValueError, match="kl_coef"):
        pg.reinforce_lm_step(policy, ref, tok, lambda ts: [0.0] * len(ts), torch.optim.SGD(policy.parameters(), 0.1),
                             kl_coef=-1.0)
    with pytest.raises(ValueError, match="reward_fn"):
        pg.reinforce_lm_step(policy, ref, tok, lambda ts: [0.0], torch.optim.SGD(policy.parameters(), 0.1),
                             batch_size=3, max_new_tokens=2)


# ---------------------------------------------------------------- PPO on CartPole
def test_train_ppo_balances_cartpole_and_keeps_updates_small():
    returns, stats = pg.train_ppo(iterations=25, episodes_per_iteration=8, seed=0, max_episode_steps=200,
                                  progress=False)
    assert returns.shape == (200,)
    # a random policy balances the pole for ~20 steps; PPO must get most of the way to the 200 cap
    assert returns[:16].mean() < 40
    assert returns[-16:].mean() > 150
    assert len(stats) == 25
    # the clipped objective keeps each update near the data-collecting policy
    assert max(s["mean_approx_kl"] for s in stats) < 0.1
    assert all(0.0 <= s["mean_clipfrac"] <= 1.0 for s in stats)


def test_train_ppo_is_seeded_and_checks_input():
    a, _ = pg.train_ppo(iterations=2, episodes_per_iteration=2, seed=3, max_episode_steps=50, progress=False)
    b, _ = pg.train_ppo(iterations=2, episodes_per_iteration=2, seed=3, max_episode_steps=50, progress=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="epochs"):
        pg.train_ppo(epochs=0, progress=False)
    with pytest.raises(ValueError, match="clip_eps"):
        pg.train_ppo(clip_eps=0.0, progress=False)


def test_rollouts_ignore_a_polluted_generation_config():
    """One sampler: the behaviour policy is the scored one whatever the checkpoint's generation_config.

    A 2-word vocabulary and at most 2 new tokens: 21 possible responses, each with its exact
    probability under the model (teacher forcing, enumerated). A generation_config with a
    repetition penalty, suppressed tokens, a minimum length and top-k would make ``generate``
    sample another distribution (checked: chi-square rejects it); sample_rollouts's frequencies
    agree with the scored probabilities (chi-square, p > 0.001).
    """
    from scipy import stats

    tok = word_tokenizer(["a", "b"])
    V = len(tok)  # <eos>, a, b, <pad>, <unk>
    model = _tiny_gpt2(V, seed=5, n_embd=8)
    seqs = [(0,)] + [(x, 0) for x in range(1, V)] + [(x, y) for x in range(1, V) for y in range(1, V)]
    with torch.no_grad():
        probs = torch.stack([
            torch.log_softmax(model(torch.tensor([[0, *s]])).logits[0, :-1], -1)
            .gather(-1, torch.tensor(s)[:, None]).sum() for s in seqs]).exp().double()
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)
    probs = probs / probs.sum()  # float32 round-off: chisquare wants totals equal to 1e-8
    index = {s: i for i, s in enumerate(seqs)}

    def observed(responses):
        counts = torch.zeros(len(seqs), dtype=torch.float64)
        for r in responses:
            r = tuple(r[: r.index(0) + 1] if 0 in r else r)
            counts[index[r]] += 1
        return counts

    cfg = model.generation_config
    cfg.repetition_penalty, cfg.suppress_tokens, cfg.min_new_tokens, cfg.top_k = 5.0, [2], 2, 3
    n = 12_000
    roll = pg.sample_rollouts(model, tok, n, max_new_tokens=2, generator=torch.Generator().manual_seed(0))
    ours = observed([row[1:][m.bool()].tolist() for row, m in zip(roll.input_ids, roll.attention_mask[:, 1:])])
    assert stats.chisquare(ours.numpy(), (probs * n).numpy()).pvalue > 1e-3

    torch.manual_seed(0)  # the control: generate follows the polluted config
    start = torch.zeros(n, 1, dtype=torch.long)
    out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, max_new_tokens=2,
                         pad_token_id=0, eos_token_id=0)
    theirs = observed([row[1:].tolist() for row in out])
    assert stats.chisquare(theirs.numpy(), (probs * n).numpy()).pvalue < 1e-6


def test_rollouts_are_seeded_by_their_generator_without_touching_the_global_one(world_lm):
    world, tok, model = world_lm
    state = torch.get_rng_state()
    a = pg.sample_rollouts(model, tok, 8, max_new_tokens=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not used
    b = pg.sample_rollouts(model, tok, 8, max_new_tokens=5, generator=torch.Generator().manual_seed(3))
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids)
    with pytest.raises(TypeError, match="generator"):
        pg.sample_rollouts(model, tok, 2, generator=3)
