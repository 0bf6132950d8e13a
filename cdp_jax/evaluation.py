"""Policy evaluation in gymnasium vector envs, normalised scores and the ``eval.json`` record.

:func:`evaluate` runs ``num_episodes`` episodes, ``num_envs`` at a time, with one batched (jitted)
policy call per environment step (per ``n_action`` steps for chunked policies). Each environment
plays exactly one episode per round; its return stops accumulating at its first ``terminated`` or
``truncated`` (vector envs auto-reset, and the steps taken after the end are discarded), so no
reward is ever added after an episode ended. Success is ``info["success"]`` at any step of the
episode when the environment reports it, else any positive reward (the Robomimic convention).

:class:`EvalRecord` keeps every evaluation with its protocol (gradient step, episodes, candidates,
sampler, steps) and writes the last, the best and the running average of the last few to
``eval.json``.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np

VECTOR_MODES = ("sync", "async")


def make_vector_env(make_env: Callable[[], gym.Env], num_envs: int, mode: str = "sync"):
    """``num_envs`` copies of ``make_env()`` in a Sync (default) or Async vector env."""
    if mode not in VECTOR_MODES:
        raise ValueError(f"Unknown vector env mode {mode!r}; expected one of {VECTOR_MODES}.")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    if mode == "sync":
        return gym.vector.SyncVectorEnv([make_env] * num_envs)
    # fork() in a process running JAX's thread pools can deadlock: start workers by spawn.
    return gym.vector.AsyncVectorEnv([make_env] * num_envs, context="spawn")


def evaluate(policy: Callable, envs: gym.vector.VectorEnv, key: jax.Array, *, num_episodes: int,
             obs_fn: Callable = np.asarray, obs_horizon: int | None = None, n_action: int = 1,
             seed: int = 0, max_episode_steps: int | None = None) -> dict:
    """Roll out ``policy`` for ``num_episodes`` episodes.

    Args:
      policy: ``(obs, key) -> actions``. ``obs`` is ``(num_envs, obs_dim)`` when ``obs_horizon`` is
        ``None``, else ``(num_envs, obs_horizon, obs_dim)`` (the last ``obs_horizon`` observations,
        the first repeated at the start of an episode); actions are ``(num_envs, action_dim)``, or
        chunks ``(num_envs, chunk, action_dim)`` of which the first ``n_action`` are executed.
      envs: a vector env (see :func:`make_vector_env`).
      key: PRNG key, folded with the step counter for each policy call.
      num_episodes: episodes in total (rounds of ``num_envs``; extra episodes are not counted).
      obs_fn: maps the vector env's observation (array or dict) to normalised
        ``(num_envs, obs_dim)``.
      seed: episode ``i`` of round ``r`` resets with seed ``seed + r * num_envs + i``.
      max_episode_steps: optional cap on top of the environments' own time limits.

    Returns:
      dict with ``returns`` (list, per episode), ``successes``, ``lengths``, ``return_mean``,
      ``return_std``, ``success_rate``, ``episodes``, and ``timing``: ``wall_s`` of the whole
      evaluation, ``policy_s`` spent in policy calls (results fetched), ``env_steps`` (every
      env's steps, those after an episode's end included) and ``policy_calls``.
    """
    num_envs = envs.num_envs
    chunked = obs_horizon is not None
    returns, successes, lengths = [], [], []
    calls, env_steps, policy_s, start = 0, 0, 0.0, time.perf_counter()
    for r in range(math.ceil(num_episodes / num_envs)):
        obs, _ = envs.reset(seed=[seed + r * num_envs + i for i in range(num_envs)])
        obs = obs_fn(obs)
        history = collections.deque([obs] * (obs_horizon or 1), maxlen=obs_horizon or 1)
        ret = np.zeros(num_envs)
        length = np.zeros(num_envs, np.int64)
        success = np.zeros(num_envs, bool)
        done = np.zeros(num_envs, bool)
        queue: list = []
        while not done.all():
            if not queue:
                policy_obs = np.stack(history, axis=1) if chunked else history[-1]
                t0 = time.perf_counter()
                actions = np.asarray(policy(policy_obs, jax.random.fold_in(key, calls)))
                policy_s += time.perf_counter() - t0
                calls += 1
                queue = [actions[:, i] for i in range(n_action)] if chunked else [actions]
            obs, reward, terminated, truncated, info = envs.step(queue.pop(0))
            env_steps += num_envs
            active = ~done
            ret += np.where(active, reward, 0.0)
            length += active
            success |= active & _success(info, reward, num_envs)
            done |= terminated | truncated
            if max_episode_steps is not None:
                done |= length >= max_episode_steps
            history.append(obs_fn(obs))
        returns.extend(ret.tolist())
        successes.extend(success.tolist())
        lengths.extend(length.tolist())
    returns, successes, lengths = (x[:num_episodes] for x in (returns, successes, lengths))
    return {"returns": returns, "successes": successes, "lengths": lengths,
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "success_rate": float(np.mean(successes)), "length_mean": float(np.mean(lengths)),
            "episodes": len(returns),
            "timing": {"wall_s": time.perf_counter() - start, "policy_s": policy_s,
                       "env_steps": env_steps, "policy_calls": calls}}


def _success(info: dict, reward: np.ndarray, num_envs: int) -> np.ndarray:
    if "success" in info:
        value = np.asarray(info["success"], bool).reshape(num_envs)
        mask = np.asarray(info.get("_success", np.ones(num_envs, bool)), bool).reshape(num_envs)
        return value & mask
    return np.asarray(reward) > 0


class EvalRecord:
    """Every evaluation of a run with its protocol; written to ``eval.json``.

    Args:
      path: the ``eval.json`` path.
      average_last: how many of the latest evaluations the running average covers.
      history: evaluations restored from a checkpoint (to resume).
    """

    def __init__(self, path: str | os.PathLike, average_last: int = 3,
                 history: list | None = None):
        self.path = Path(path)
        self.average_last = average_last
        self.history = list(history or [])

    def add(self, step: int, result: dict, protocol: dict) -> dict:
        """Record ``result`` (from :func:`evaluate`, plus ``normalized_score``) at ``step``."""
        entry = {"gradient_step": int(step), **protocol,
                 **{k: v for k, v in result.items() if k not in ("lengths",)}}
        self.history.append(entry)
        self.write()
        return entry

    def summary(self) -> dict:
        if not self.history:
            return {}
        key = "normalized_score" if "normalized_score" in self.history[-1] else "return_mean"
        last = self.history[-1]
        best = max(self.history, key=lambda e: e[key])
        recent = self.history[-self.average_last:]
        proto = {k: v for k, v in last.items()
                 if k not in ("returns", "successes", "normalized_scores")}
        return {
            "metric": key,
            "last": proto,
            "best": {k: v for k, v in best.items()
                     if k not in ("returns", "successes", "normalized_scores")},
            "running_average": {
                key: float(np.mean([e[key] for e in recent])),
                "success_rate": float(np.mean([e["success_rate"] for e in recent])),
                "gradient_steps": [e["gradient_step"] for e in recent],
                "evaluations": len(recent),
            },
        }

    def write(self) -> None:
        data = {"summary": self.summary(), "evaluations": self.history}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)
