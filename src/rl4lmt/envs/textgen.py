"""Writing a review as an MDP: state = the prefix so far, action = the next token.

This is the bridge from the gridworld to RL for language models. An episode writes one
TinyReviews review word by word:

* **state** ``s_t`` = the tokens so far. The observation is a dict with ``"tokens"``, a
  fixed-length int array ``[<bos>, w_1, ..., w_t, <pad>, ...]`` of length
  ``max_length + 1`` (``<bos>`` is the tokenizer's BOS, id 0 = ``<eos>``; a language model
  reads ``tokens[:length]`` directly as ``input_ids``), and ``"length"`` = t + 1.
* **action** ``a_t`` = the id of the next word, one of the world's vocabulary (the
  tokenizer's ids ``0 .. len(world.vocab) - 1``, which are the world's words in order);
  action 0 is ``<eos>``, the end of the review.
* **transition** deterministic: append the word.
* **reward** 0 on every step but the last. The episode ends when the agent emits ``<eos>``
  (terminated) or when the text reaches ``max_length`` words without it (also terminated:
  the length is part of the observation, so the cut is part of the MDP). The final reward
  is ``reward_fn(text)`` -- by default the world's gold sentiment, ``world.sentiment`` --
  except that a text the world cannot produce (ungrammatical, or cut at the length limit)
  earns ``invalid_reward`` (default -1, the worst sentiment) when it is not ``None``.

A language model is a policy for this MDP, pi(a_t | s_t) = p_theta(w_{t+1} | w_{1:t}), which
is the view chapter 4 (policy gradients) and chapter 7 (PPO-RLHF) build on.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["TextGenEnv"]


class TextGenEnv(gym.Env):
    """Token-by-token generation of a TinyReviews review as a gymnasium environment.

    Args:
        world: a :class:`rl4lmt.world.TinyReviews` (default: ``TinyReviews()``).
        tokenizer: the word-level tokenizer whose ids ``0..len(world.vocab)-1`` are the world's
            words (default: ``rl4lmt.zoo.build_tokenizer(world)``, the tokenizer of the shipped
            ``load("tiny-reviews")`` model); it provides the BOS and pad ids of the observation.
        reward_fn: ``text -> float``, the reward of a finished review (default
            ``world.sentiment``); e.g. a learned reward model's score.
        max_length: most words per review before the episode is cut.
        invalid_reward: reward of an ungrammatical or cut text (``None``: use ``reward_fn``).
        prompts: optional review beginnings; ``reset`` picks one uniformly at random and the
            agent continues it. Default: every review starts from scratch.
        render_mode: ``None`` or ``"ansi"`` (the text so far).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        world=None,
        tokenizer=None,
        reward_fn: Callable[[str], float] | None = None,
        max_length: int = 30,
        invalid_reward: float | None = -1.0,
        prompts: Sequence[str] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if world is None:
            from rl4lmt.world import TinyReviews  # lazy: importing rl4lmt.envs stays cheap
            world = TinyReviews()
        if not hasattr(world, "vocab") or not hasattr(world, "sentiment"):
            raise TypeError(f"world must be a TinyReviews world, got {type(world).__name__}")
        if tokenizer is None:
            from rl4lmt.zoo import build_tokenizer  # the tokenizer the shipped tiny GPT-2 uses
            tokenizer = build_tokenizer(world)
        V = len(world.vocab)
        if list(tokenizer.convert_ids_to_tokens(list(range(V)))) != list(world.vocab):
            raise ValueError("tokenizer ids 0..len(world.vocab)-1 must be the world's words in order")
        if tokenizer.bos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("tokenizer must define bos_token and pad_token")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable (text -> float), got {type(reward_fn).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")

        self.world, self.tokenizer = world, tokenizer
        self.reward_fn = world.sentiment if reward_fn is None else reward_fn
        self.max_length = int(max_length)
        self.invalid_reward = None if invalid_reward is None else float(invalid_reward)
        self.render_mode = render_mode
        self.eos_id = int(world.word_to_id[world.eos])
        self.bos_id, self.pad_id = int(tokenizer.bos_token_id), int(tokenizer.pad_token_id)
        self.prompts = [] if prompts is None else [self._encode(p, "prompts") for p in prompts]

        n_tokens = max(len(tokenizer), self.pad_id + 1, self.bos_id + 1)
        self.action_space = spaces.Discrete(V)
        self.observation_space = spaces.Dict({
            "tokens": spaces.MultiDiscrete(np.full(self.max_length + 1, n_tokens, dtype=np.int64)),
            "length": spaces.Discrete(self.max_length + 2),
        })
        self.words: list[str] = []

    def _encode(self, prompt: str, name: str) -> list[str]:
        if not isinstance(prompt, str):
            raise TypeError(f"{name} must hold strings, got {type(prompt).__name__}")
        words = prompt.split()
        unknown = [w for w in words if w not in self.world.word_to_id or w == self.world.eos]
        if unknown:
            raise ValueError(f"{name}: words {unknown} are not in the world's vocabulary")
        if len(words) >= self.max_length:
            raise ValueError(f"{name}: a prompt must be shorter than max_length={self.max_length} words")
        return words

    @property
    def text(self) -> str:
        """The review written so far (words joined by spaces; the end-of-review is implicit)."""
        return " ".join(self.words)

    def _obs(self) -> dict:
        tokens = np.full(self.max_length + 1, self.pad_id, dtype=np.int64)
        tokens[0] = self.bos_id  # the LM's context starts with BOS, as the tokenizer writes it
        tokens[1 : len(self.words) + 1] = [self.world.word_to_id[w] for w in self.words]
        return {"tokens": tokens, "length": len(self.words) + 1}

    def _final_reward(self, finished: bool) -> float:
        if self.invalid_reward is not None and (not finished or not self.world.is_grammatical(self.text)):
            return self.invalid_reward
        return float(self.reward_fn(self.text))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.words = list(self.prompts[self.np_random.integers(len(self.prompts))]) if self.prompts else []
        return self._obs(), {"text": self.text}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be a token id in [0, {self.action_space.n}), got {action!r}")
        action = int(action)
        if action == self.eos_id:  # the agent ends the review: judge the finished text
            return self._obs(), self._final_reward(True), True, False, {"text": self.text, "reason": "eos"}
        self.words.append(self.world.vocab[action])
        if len(self.words) >= self.max_length:  # cut: no room left for more words
            return self._obs(), self._final_reward(False), True, False, {"text": self.text, "reason": "length"}
        return self._obs(), 0.0, False, False, {"text": self.text}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self.text + "\n"
