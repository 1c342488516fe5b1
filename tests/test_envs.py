"""rl4lmt.envs: gymnasium's check_env, and each environment's dynamics against an independent
account (its own transition model sampled by Monte Carlo, the world's exact sentiment, the
tokenizer's own encoding)."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl4lmt.envs
from rl4lmt import mdp
from rl4lmt.envs import ACTIONS


@pytest.fixture(scope="module")
def world():
    from rl4lmt.world import TinyReviews
    return TinyReviews()


@pytest.fixture(scope="module")
def tokenizer(world):
    from rl4lmt.zoo import build_tokenizer
    return build_tokenizer(world)


# ----------------------------------------------------------------------------- check_env
@pytest.mark.parametrize("kwargs", [{}, {"slip": 0.2, "step_reward": -0.04}, {"layout": ["S.#+", "...-"]}])
def test_gridworld_passes_check_env(kwargs):
    env = gym.make("rl4lmt/GridWorld-v0", **kwargs)
    check_env(env.unwrapped, skip_render_check=False)
    assert env.spec.max_episode_steps == 100


@pytest.mark.parametrize("kwargs", [{}, {"k": 3, "drift": 0.1, "steps": 20}])
def test_bandit_passes_check_env(kwargs):
    check_env(gym.make("rl4lmt/Bandit-v0", **kwargs).unwrapped)


def test_textgen_passes_check_env(world, tokenizer):
    env = gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer, max_length=12)
    check_env(env.unwrapped)
    check_env(gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer, prompts=["the plot was"]).unwrapped)
    check_env(gym.make("rl4lmt/TextGen-v0").unwrapped)  # defaults: TinyReviews() and its tokenizer


# ----------------------------------------------------------------------------- gridworld
def test_gridworld_layout_matches_the_lecture():
    env = gym.make("rl4lmt/GridWorld-v0").unwrapped
    assert env.n_states == 11 and env.action_space.n == 4
    assert env.cells[env.start_state] == (1, 1)
    with pytest.raises(ValueError, match="cell"):
        env.state_of((2, 2))  # the wall
    assert env.terminal[env.state_of((4, 3))] and env.terminal[env.state_of((4, 2))]
    assert env.terminal.sum() == 2
    # deterministic moves: up from (1,1) is (1,2); right from (1,2) bumps into the wall
    P, _ = env.transition_model()
    up, right = ACTIONS.index("up"), ACTIONS.index("right")
    assert P[env.state_of((1, 1)), up, env.state_of((1, 2))] == 1.0
    assert P[env.state_of((1, 2)), right, env.state_of((1, 2))] == 1.0


def test_gridworld_steps_follow_the_transition_model():
    # Monte Carlo frequencies of env.step from (3,2) "up" with slip 0.3 vs P[s, a, :].
    env = gym.make("rl4lmt/GridWorld-v0", slip=0.3).unwrapped
    P, R = env.transition_model()
    s, a = env.state_of((3, 2)), ACTIONS.index("up")
    env.reset(seed=0)
    n, counts = 20_000, np.zeros(env.n_states)
    for _ in range(n):
        env.state = s
        nxt, r, term, trunc, _ = env.step(a)
        counts[nxt] += 1
        assert r == R[s, a] == 0.0 and not term and not trunc
    # by hand: up -> (3,3) w.p. 0.7, right -> (4,2) w.p. 0.15, left -> wall, stay w.p. 0.15
    expected = np.zeros(env.n_states)
    expected[env.state_of((3, 3))], expected[env.state_of((4, 2))], expected[s] = 0.7, 0.15, 0.15
    np.testing.assert_allclose(P[s, a], expected)
    assert np.all(np.abs(counts / n - expected) < 4 * np.sqrt(0.25 / n))


def test_gridworld_exit_convention_and_returns():
    # The terminal's reward is paid on the step that leaves it, so the discounted return of
    # the optimal deterministic path from (1,1) is gamma^5 -- the lecture's V*(1,1).
    env = gym.make("rl4lmt/GridWorld-v0")
    obs, _ = env.reset(seed=0)
    path = ["up", "up", "right", "right", "right", "up"]  # last action: any (exit)
    G, rewards = 0.0, []
    for t, name in enumerate(path):
        obs, r, term, trunc, info = env.step(ACTIONS.index(name))
        rewards.append(r)
        G += 0.9**t * r
    assert rewards == [0, 0, 0, 0, 0, 1.0] and term and not trunc
    assert info["cell"] == (4, 3)
    assert G == pytest.approx(0.9**5)


def test_gridworld_monte_carlo_returns_match_planned_values():
    # Slippery grid: the average discounted return of the greedy policy from the start
    # matches V*(1,1) from value iteration within the Monte Carlo error.
    env = gym.make("rl4lmt/GridWorld-v0", slip=0.2, step_reward=-0.04)
    u = env.unwrapped
    V, pi = mdp.value_iteration(*u.transition_model(), gamma=0.9)
    returns = []
    for ep in range(3000):
        s, _ = env.reset(seed=ep)
        G, disc, done = 0.0, 1.0, False
        while not done:
            s, r, term, trunc, _ = env.step(int(pi[s]))
            G += disc * r
            disc *= 0.9
            done = term or trunc
        returns.append(G)
    returns = np.array(returns)
    assert abs(returns.mean() - V[u.start_state]) < 4 * returns.std() / np.sqrt(len(returns))


def test_gridworld_truncates_and_renders():
    env = gym.make("rl4lmt/GridWorld-v0", render_mode="ansi")
    env.reset(seed=0)
    for _ in range(100):
        _, _, term, trunc, _ = env.step(ACTIONS.index("down"))  # bump into the bottom edge
        assert not term
    assert trunc
    assert env.render().splitlines()[2].startswith("A")  # the agent sits at (1,1)


def test_gridworld_rejects_bad_input():
    for kwargs, name in [({"slip": 1.5}, "slip"), ({"gamma": -0.1}, "gamma"),
                         ({"layout": ["..+", "..-"]}, "layout"), ({"layout": ["S.x"]}, "layout"),
                         ({"render_mode": "human"}, "render_mode")]:
        with pytest.raises(ValueError, match=name):
            rl4lmt.envs.GridWorldEnv(**kwargs)
    env = rl4lmt.envs.GridWorldEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(4)


# ----------------------------------------------------------------------------- bandit
def test_bandit_rewards_have_the_arm_means():
    env = gym.make("rl4lmt/Bandit-v0", k=4, steps=10_000).unwrapped
    _, info = env.reset(seed=1)
    q = info["q_star"]
    for arm in range(4):
        rs = [env.step(arm)[1] for _ in range(2000)]
        assert abs(np.mean(rs) - q[arm]) < 4 / np.sqrt(2000) and abs(np.std(rs) - 1) < 0.1
    # same seed, same testbed
    np.testing.assert_array_equal(env.reset(seed=1)[1]["q_star"], q)


def test_bandit_truncates_drifts_and_reports_optimal():
    env = gym.make("rl4lmt/Bandit-v0", k=5, drift=0.5, steps=30).unwrapped
    env.reset(seed=0)
    q0 = env.q_star.copy()
    best = env.optimal_action
    _, _, term, trunc, info = env.step(best)
    assert info["optimal"] and not term and not trunc
    assert not np.allclose(env.q_star, q0)  # the random walk moved
    for _ in range(29):
        _, _, term, trunc, _ = env.step(0)
    assert trunc and not term
    with pytest.raises(ValueError, match="k"):
        rl4lmt.envs.BanditEnv(k=0)
    with pytest.raises(ValueError, match="drift"):
        rl4lmt.envs.BanditEnv(drift=-1.0)


# ----------------------------------------------------------------------------- text generation
def play(env, text, seed=0):
    """Write ``text`` and end it with <eos>; return (observations, rewards, final info)."""
    obs, _ = env.reset(seed=seed)
    words = env.unwrapped.world.word_to_id
    observations, rewards = [obs], []
    ids = [words[w] for w in text.split()] + [env.unwrapped.eos_id]
    for a in ids:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return observations, rewards, info, term


def test_textgen_reward_is_the_gold_sentiment(world, tokenizer):
    env = gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer)
    for text in world.sample(10, seed=3):
        obs, rewards, info, term = play(env, text)
        assert term and info["text"] == text and info["reason"] == "eos"
        assert rewards[:-1] == [0.0] * (len(rewards) - 1)
        assert rewards[-1] == pytest.approx(world.sentiment(text))
        # the observation is what the tokenizer itself makes of the text (BOS first)
        ids = tokenizer(text)["input_ids"]
        last = obs[-1]
        assert last["length"] == len(ids)
        assert list(last["tokens"][: last["length"]]) == list(ids)
        assert np.all(last["tokens"][last["length"]:] == tokenizer.pad_token_id)


def test_textgen_penalties_prompts_and_custom_reward(world, tokenizer):
    env = gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer, max_length=5)
    _, rewards, info, term = play(env, "the the plot")  # ungrammatical
    assert term and rewards[-1] == -1.0
    _, rewards, info, term = play(env, "the plot was good , but")  # cut at 5 words
    assert term and info["reason"] == "length" and rewards[-1] == -1.0 and info["text"].count(" ") == 4
    # a pluggable reward: number of words, and no penalty
    env = gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer,
                   reward_fn=lambda t: float(len(t.split())), invalid_reward=None)
    _, rewards, _, _ = play(env, "the the plot")
    assert rewards[-1] == 3.0
    env = gym.make("rl4lmt/TextGen-v0", world=world, tokenizer=tokenizer, prompts=["the music was"])
    obs, info = env.reset(seed=0)
    assert info["text"] == "the music was" and obs["length"] == 4
    with pytest.raises(ValueError, match="prompts"):
        rl4lmt.envs.TextGenEnv(world=world, tokenizer=tokenizer, prompts=["the zebra"])
    with pytest.raises(ValueError, match="max_length"):
        rl4lmt.envs.TextGenEnv(world=world, tokenizer=tokenizer, max_length=0)
    with pytest.raises(TypeError, match="reward_fn"):
        rl4lmt.envs.TextGenEnv(world=world, tokenizer=tokenizer, reward_fn=3)
