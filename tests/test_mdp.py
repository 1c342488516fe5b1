"""rl4lmt.mdp against the lectures' worked numbers, Russell & Norvig's table, linear algebra
and the bandit results of Sutton & Barto (chapter 2)."""
import gymnasium as gym
import numpy as np
import pytest

import rl4lmt.envs  # noqa: F401  (registers the ids)
from rl4lmt import mdp


def grid(**kwargs):
    return gym.make("rl4lmt/GridWorld-v0", **kwargs).unwrapped


def random_mdp(rng, S=6, A=3, end=0.1):
    """A random MDP whose every step ends the episode with probability ``end``."""
    P = rng.random((S, A, S))
    P = (1 - end) * P / P.sum(-1, keepdims=True)
    return P, rng.normal(size=(S, A))


# ----------------------------------------------------------------------------- planning
def test_value_iteration_reproduces_the_lecture_numbers():
    # Lecture 2, deterministic 4x3 gridworld, gamma = 0.9, no step reward.
    env = grid()
    V, _ = mdp.value_iteration(*env.transition_model(), gamma=0.9)
    expected = {(4, 3): 1.0, (3, 3): 0.9, (2, 3): 0.81, (1, 1): 0.9**5, (4, 2): -1.0}
    for cell, v in expected.items():
        assert V[env.state_of(cell)] == pytest.approx(v, abs=1e-9), cell
    assert round(V[env.state_of((1, 1))], 2) == 0.59


def test_value_iteration_gamma_one_all_ones():
    # Lecture 2, gamma = 1: every square can reach +1 without loss, so V* = 1 except at -1.
    env = grid()
    V, _ = mdp.value_iteration(*env.transition_model(), gamma=1.0)
    expected = np.where(np.arange(env.n_states) == env.state_of((4, 2)), -1.0, 1.0)
    np.testing.assert_allclose(V, expected, atol=1e-9)


def test_value_iteration_matches_russell_norvig_slippery_grid():
    # Russell & Norvig, AIMA 3rd ed., Fig. 17.3: slip 0.2, R(s) = -0.04, gamma = 1.
    env = grid(slip=0.2, step_reward=-0.04)
    V, pi = mdp.value_iteration(*env.transition_model(), gamma=1.0)
    table = {(1, 3): 0.812, (2, 3): 0.868, (3, 3): 0.918, (1, 2): 0.762, (3, 2): 0.660,
             (1, 1): 0.705, (2, 1): 0.655, (3, 1): 0.611, (4, 1): 0.388}
    for cell, v in table.items():
        assert V[env.state_of(cell)] == pytest.approx(v, abs=5e-4), cell
    # the book's optimal policy: (1,1) goes up, (4,1) goes left (the long way round)
    assert rl4lmt.envs.ACTIONS[pi[env.state_of((1, 1))]] == "up"
    assert rl4lmt.envs.ACTIONS[pi[env.state_of((4, 1))]] == "left"


def test_step_reward_changes_the_optimal_policy():
    # Lecture 5: with -2 per step, diving into -1 from (4,1) costs -2 - 1 = -3 (gamma = 1),
    # while the way to +1 takes four steps: 4 * (-2) + 1 = -7. Without a step cost it goes round.
    up = rl4lmt.envs.ACTIONS.index("up")
    env = grid(step_reward=-2.0)
    V, pi = mdp.value_iteration(*env.transition_model(), gamma=1.0)
    assert pi[env.state_of((4, 1))] == up
    assert V[env.state_of((4, 1))] == pytest.approx(-3.0)
    env0 = grid(step_reward=0.0)
    _, pi0 = mdp.value_iteration(*env0.transition_model(), gamma=0.9)
    assert pi0[env0.state_of((4, 1))] != up


@pytest.mark.parametrize("slip,step_reward,gamma", [(0.0, 0.0, 0.9), (0.2, -0.04, 0.95), (0.4, -0.1, 0.5)])
def test_policy_evaluation_matches_linear_solve(slip, step_reward, gamma):
    # v_pi = (I - gamma P_pi)^-1 r_pi, solved independently with numpy.
    env = grid(slip=slip, step_reward=step_reward)
    P, R = env.transition_model()
    rng = np.random.default_rng(0)
    S, A = R.shape
    for pi in (rng.integers(A, size=S), rng.dirichlet(np.ones(A), size=S)):
        pim = np.eye(A)[pi] if pi.ndim == 1 else pi
        P_pi = np.einsum("sa,sat->st", pim, P)
        r_pi = (pim * R).sum(1)
        exact = np.linalg.solve(np.eye(S) - gamma * P_pi, r_pi)
        np.testing.assert_allclose(mdp.policy_evaluation(P, R, pi, gamma), exact, atol=1e-8)


def test_policy_evaluation_random_mdps_gamma_one():
    rng = np.random.default_rng(1)
    for _ in range(5):
        P, R = random_mdp(rng)
        pi = rng.dirichlet(np.ones(3), size=6)
        P_pi = np.einsum("sa,sat->st", pi, P)
        exact = np.linalg.solve(np.eye(6) - P_pi, (pi * R).sum(1))
        np.testing.assert_allclose(mdp.policy_evaluation(P, R, pi, 1.0), exact, atol=1e-7)


@pytest.mark.parametrize("slip,step_reward,gamma",
                         [(0.0, 0.0, 0.9), (0.2, -0.04, 1.0), (0.2, 0.0, 0.9), (0.1, -0.5, 0.99)])
def test_policy_iteration_agrees_with_value_iteration(slip, step_reward, gamma):
    env = grid(slip=slip, step_reward=step_reward)
    P, R = env.transition_model()
    # with gamma = 1 policy evaluation needs a start policy that ends every episode: take
    # the greedy policy of gamma = 0.9 (any proper policy would do)
    start = mdp.value_iteration(P, R, 0.9)[1]
    V_vi, pi_vi = mdp.value_iteration(P, R, gamma)
    V_pi, pi_pi = mdp.policy_iteration(P, R, gamma, policy=start)
    np.testing.assert_allclose(V_vi, V_pi, atol=1e-7)
    # both greedy policies are optimal: evaluating either gives v_*
    for pi in (pi_vi, pi_pi):
        np.testing.assert_allclose(mdp.policy_evaluation(P, R, pi, gamma), V_vi, atol=1e-7)


def test_policy_iteration_on_random_mdps_and_bellman_optimality():
    rng = np.random.default_rng(2)
    for _ in range(5):
        P, R = random_mdp(rng)
        V_vi, pi_vi = mdp.value_iteration(P, R, 0.9)
        V_pi, _ = mdp.policy_iteration(P, R, 0.9)
        np.testing.assert_allclose(V_vi, V_pi, atol=1e-7)
        # Bellman optimality residual, computed by hand: V(s) = max_a [R + gamma sum P V]
        Q = np.array([[R[s, a] + 0.9 * sum(P[s, a, t] * V_vi[t] for t in range(6)) for a in range(3)]
                      for s in range(6)])
        np.testing.assert_allclose(Q.max(1), V_vi, atol=1e-8)
        np.testing.assert_allclose(mdp.q_from_v(P, R, V_vi, 0.9), Q, atol=1e-12)
        # brute force over all 3^6 deterministic policies: none beats v_* anywhere
        best = np.full(6, -np.inf)
        for code in range(3**6):
            pi = np.array([(code // 3**i) % 3 for i in range(6)])
            P_pi = P[np.arange(6), pi]
            best = np.maximum(best, np.linalg.solve(np.eye(6) - 0.9 * P_pi, R[np.arange(6), pi]))
        np.testing.assert_allclose(best, V_vi, atol=1e-7)


def test_value_iteration_history_converges():
    env = grid()
    hist = []
    V, _ = mdp.value_iteration(*env.transition_model(), gamma=0.9, history=hist)
    assert np.all(hist[0] == 0) and np.allclose(hist[-1], V)
    # after k sweeps, (1,1) still has value 0 for k < 6: the +1 is six events away
    s = env.state_of((1, 1))
    assert [h[s] > 0 for h in hist[:7]] == [False] * 6 + [True]


def test_planning_rejects_bad_input():
    P, R = grid().transition_model()
    with pytest.raises(ValueError, match="gamma"):
        mdp.value_iteration(P, R, 1.5)
    with pytest.raises(ValueError, match="R must"):
        mdp.value_iteration(P, R[:, :2], 0.9)
    with pytest.raises(ValueError, match="P must"):
        mdp.value_iteration(P * 2, R, 0.9)
    with pytest.raises(ValueError, match="policy"):
        mdp.policy_evaluation(P, R, np.full(P.shape[0], 7), 0.9)
    with pytest.raises(TypeError, match="policy"):
        mdp.policy_evaluation(P, R, np.zeros(P.shape[0]), 0.9)
    # gamma = 1 and a policy that bumps into the top edge forever with a step cost: no fixed point
    Pn, Rn = grid(step_reward=-1.0).transition_model()
    with pytest.raises(ValueError, match="terminal"):
        mdp.policy_evaluation(Pn, Rn, np.zeros(Pn.shape[0], dtype=int), 1.0, max_iter=500)


# ----------------------------------------------------------------------------- bandits
def test_incremental_update_gives_sample_average_and_recency_weighting():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=50)
    q = 0.0
    for n, r in enumerate(rewards, start=1):
        q = mdp.incremental_update(q, r, 1.0 / n)
    assert q == pytest.approx(rewards.mean())
    alpha, q, q1 = 0.1, 4.0, 4.0
    for r in rewards:
        q = mdp.incremental_update(q, r, alpha)
    n = len(rewards)
    closed = (1 - alpha) ** n * q1 + sum(alpha * (1 - alpha) ** (n - i) * r for i, r in enumerate(rewards, start=1))
    assert q == pytest.approx(closed)


def test_epsilon_greedy_frequencies():
    rng = np.random.default_rng(4)
    Q = np.tile([0.0, 2.0, 1.0, -1.0], (40_000, 1))
    a = mdp.epsilon_greedy(Q, 0.2, rng)
    counts = np.bincount(a, minlength=4) / len(a)
    expected = np.array([0.05, 0.85, 0.05, 0.05])  # 1 - eps + eps/k on the greedy arm
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected * (1 - expected) / len(a)))
    # ties are broken uniformly at random, never always to the first maximum
    tied = mdp.epsilon_greedy(np.tile([1.0, 1.0, 0.0], (30_000, 1)), 0.0, rng)
    assert abs(np.mean(tied == 0) - 0.5) < 0.02 and not np.any(tied == 2)
    with pytest.raises(ValueError, match="epsilon"):
        mdp.epsilon_greedy(Q, 1.5, rng)
    with pytest.raises(TypeError, match="rng"):
        mdp.epsilon_greedy(Q, 0.1, 0)


def test_ucb_scores_and_agent():
    Q = np.array([1.0, 0.5, 0.0])
    N = np.array([4.0, 1.0, 0.0])
    s = mdp.ucb_scores(Q, N, t=5, c=2.0)
    assert s[2] == np.inf
    # worked by hand: ln 5 = 1.60944; arm 0: 1 + 2 sqrt(1.60944 / 4) = 2.26864, arm 1: 0.5 + 2 sqrt(1.60944) = 3.03727
    np.testing.assert_allclose(s[:2], [2.26864, 3.03727], atol=1e-5)
    assert np.argmax(s[:2]) == 1  # the less tried arm wins despite its lower estimate
    # a UCB agent tries every arm once before repeating any
    agent = mdp.BanditAgent(k=6, n_runs=3, c=1.0)
    rng = np.random.default_rng(5)
    seen = []
    for _ in range(6):
        a = agent.act(rng)
        seen.append(a)
        agent.update(a, rng.normal(size=3))
    assert all(sorted(col) == list(range(6)) for col in np.array(seen).T)


def test_bandit_agent_estimates_are_sample_averages():
    rng = np.random.default_rng(6)
    agent = mdp.BanditAgent(k=4, n_runs=2, epsilon=1.0)
    acts, rews = [], []
    for _ in range(200):
        a = agent.act(rng)
        r = rng.normal(size=2)
        agent.update(a, r)
        acts.append(a)
        rews.append(r)
    acts, rews = np.array(acts), np.array(rews)
    for run in range(2):
        for arm in range(4):
            mask = acts[:, run] == arm
            assert agent.N[run, arm] == mask.sum()
            assert agent.Q[run, arm] == pytest.approx(rews[mask, run].mean())


def test_run_bandit_reproduces_sutton_barto_chapter_2():
    # Sutton & Barto Fig. 2.2-2.4 (10-armed testbed, 1000 steps): epsilon = 0.1 reaches an
    # average reward near 1.4 and ~80% optimal actions, greedy stays near 1.0; UCB (c = 2)
    # beats epsilon-greedy; optimistic greedy (Q1 = 5, alpha = 0.1) ends with more optimal picks.
    def last(agent):
        res = mdp.run_bandit(agent, steps=1000, seed=0)
        return res.mean_reward()[-200:].mean(), res.percent_optimal()[-200:].mean()

    n = 1000
    eps_r, eps_o = last(mdp.BanditAgent(10, n, epsilon=0.1))
    greedy_r, greedy_o = last(mdp.BanditAgent(10, n, epsilon=0.0))
    ucb_r, _ = last(mdp.BanditAgent(10, n, c=2.0))
    _, opt_o = last(mdp.BanditAgent(10, n, initial=5.0, alpha=0.1))
    assert 1.25 < eps_r < 1.5 and 70 < eps_o < 90
    assert 0.9 < greedy_r < 1.15 and greedy_o < 45
    assert ucb_r > eps_r
    assert opt_o > eps_o


def test_run_bandit_is_seeded_and_checks_input():
    a = mdp.run_bandit(mdp.BanditAgent(10, 50, epsilon=0.1), steps=100, seed=7)
    b = mdp.run_bandit(mdp.BanditAgent(10, 50, epsilon=0.1), steps=100, seed=7)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert a.rewards.shape == a.optimal.shape == (50, 100)
    with pytest.raises(ValueError, match="steps"):
        mdp.run_bandit(mdp.BanditAgent(), steps=0)
    with pytest.raises(ValueError, match="alpha"):
        mdp.BanditAgent(alpha=0.0)


def test_constant_step_size_wins_on_a_drifting_bandit():
    # Sutton & Barto, exercise 2.5: with drifting q*, sample averages fall behind alpha = 0.1.
    avg = mdp.run_bandit(mdp.BanditAgent(10, 300, epsilon=0.1), steps=3000, seed=1, drift=0.01)
    const = mdp.run_bandit(mdp.BanditAgent(10, 300, epsilon=0.1, alpha=0.1), steps=3000, seed=1, drift=0.01)
    assert const.percent_optimal()[-1000:].mean() > avg.percent_optimal()[-1000:].mean() + 5


# ------------------------------------------------------------- learning from experience
def test_mc_and_td_prediction_converge_to_policy_evaluation():
    env = grid(slip=0.2, step_reward=-0.04)
    P, R = env.transition_model()
    uniform = np.full(R.shape, 0.25)
    exact = mdp.policy_evaluation(P, R, uniform, gamma=0.9)
    V_mc, N = mdp.mc_prediction(P, R, uniform, 0.9, 4000, seed=0)
    # Monte Carlo: sample averages of real returns; each state's error is within ~4 standard errors
    # (the returns of this grid lie in [-1.5, 1], so their standard deviation is at most 1.25)
    assert np.all(np.abs(V_mc - exact) <= 4 * 1.25 / np.sqrt(N))
    V_td = mdp.td_prediction(P, R, uniform, 0.9, 4000, alpha=None, seed=0)
    np.testing.assert_allclose(V_td, exact, atol=0.08)


def test_sample_episode_follows_the_model():
    env = grid()  # deterministic: the optimal policy walks the lecture's path
    P, R = env.transition_model()
    _, pi = mdp.value_iteration(P, R, gamma=0.9)
    states, actions, rewards = mdp.sample_episode(P, R, pi, np.random.default_rng(0), start=env.start_state)
    cells = [env.cells[s] for s in states]
    assert cells[0] == (1, 1) and cells[-1] == (4, 3)
    assert len(states) == 6 and rewards == [0.0] * 5 + [1.0]


def test_q_learning_reaches_value_iterations_q_star():
    # deterministic grid: with alpha = 0.5 every backup is exact in expectation -> Q* to round-off
    env = grid()
    P, R = env.transition_model()
    V, _ = mdp.value_iteration(P, R, gamma=0.9)
    Q_star = mdp.q_from_v(P, R, V, 0.9)
    res = mdp.td_control(P, R, 0.9, 3000, alpha=0.5, epsilon=0.3, Q_star=Q_star, seed=0)
    np.testing.assert_allclose(res.Q, Q_star, atol=1e-5)
    assert res.errors[-1] < res.errors[10]
    # slippery grid with step cost: decaying step sizes; the greedy policy is optimal
    env = grid(slip=0.2, step_reward=-0.04)
    P, R = env.transition_model()
    V, pi_star = mdp.value_iteration(P, R, gamma=0.9)
    Q_star = mdp.q_from_v(P, R, V, 0.9)
    res = mdp.td_control(P, R, 0.9, 6000, alpha=None, epsilon=0.3, seed=1)
    np.testing.assert_allclose(res.Q, Q_star, atol=0.15)
    V_greedy = mdp.policy_evaluation(P, R, mdp.greedy_policy(res.Q), 0.9)
    np.testing.assert_allclose(V_greedy, V, atol=1e-3)


def test_sarsa_learns_the_values_of_its_epsilon_greedy_policy():
    # SARSA's fixed point is the optimal *epsilon-soft* action value: the Bellman equation in
    # which the next action is greedy with probability 1 - eps and uniform with probability eps.
    # Computed here by plain iteration of that equation (independent of td_control).
    env = grid(slip=0.1, step_reward=-0.04)
    P, R = env.transition_model()
    eps, gamma = 0.2, 0.9
    Q_soft = np.zeros(R.shape)
    for _ in range(2000):
        v_next = (1 - eps) * Q_soft.max(1) + eps * Q_soft.mean(1)
        Q_soft = R + gamma * P @ v_next
    V, _ = mdp.value_iteration(P, R, gamma)
    Q_star = mdp.q_from_v(P, R, V, gamma)
    assert np.abs(Q_soft - Q_star).max() > 0.1  # the two targets differ: the test can tell them apart
    res = mdp.td_control(P, R, gamma, 6000, method="sarsa", alpha=None, epsilon=eps, seed=2)
    # on average SARSA sits much closer to the epsilon-soft values than to q_*
    assert np.abs(res.Q - Q_soft).mean() < 0.4 * np.abs(res.Q - Q_star).mean()
    np.testing.assert_allclose(res.Q, Q_soft, atol=0.15)


def test_learning_from_experience_rejects_bad_input():
    P, R = grid().transition_model()
    with pytest.raises(ValueError, match="method"):
        mdp.td_control(P, R, 0.9, 10, method="expected_sarsa")
    with pytest.raises(ValueError, match="alpha"):
        mdp.td_control(P, R, 0.9, 10, alpha=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        mdp.td_control(P, R, 0.9, 10, epsilon=1.5)
    with pytest.raises(ValueError, match="episodes"):
        mdp.mc_prediction(P, R, np.zeros(R.shape[0], dtype=int), 0.9, 0)
    with pytest.raises(ValueError, match="gamma"):
        mdp.td_prediction(P, R, np.zeros(R.shape[0], dtype=int), 1.5, 10)
    a = mdp.td_control(P, R, 0.9, 50, seed=3).Q
    b = mdp.td_control(P, R, 0.9, 50, seed=3).Q
    np.testing.assert_array_equal(a, b)
