"""Policy evaluation in gymnasium vector envs, normalised scores and the ``eval.json`` record.

:func:`evaluate` runs ``num_episodes`` episodes, ``num_envs`` at a time, with one batched (jitted)
policy call per environment step (per ``n_action`` steps for chunked policies). Each environment
plays exactly one episode per round; its return stops accumulating at its first ``terminated`` or
``truncated`` (vector envs auto-reset, and the steps taken after the end are discarded), so no
reward is ever added after an episode ended. Success is ``info["success"]`` at any step of the
episode; an environment that never reports ``success`` (MuJoCo locomotion) defines none, and its
``successes`` and ``success_rate`` are ``None`` (``null`` in JSON), not a guess from the rewards.

Start states: episode ``k`` resets its environment with seed ``reset_seeds[k]``, by default
``seed + k`` (whatever the number of parallel envs), so two evaluations given the same reset seeds
play from the same start states. Every mean over episodes comes with its standard error
(:func:`standard_error`: the sample standard deviation over ``sqrt(episodes)``).

:class:`EvalRecord` keeps every evaluation with its protocol (gradient step, episodes, candidates,
sampler, steps) and writes the last, the best and the running average of the last few to
``eval.json``.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np

from cdp_jax import files
from cdp_jax.configs.names import VECTOR_MODES


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
             seed: int = 0, reset_seeds: Sequence[int] | None = None,
             max_episode_steps: int | None = None) -> dict:
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
      seed: episode ``k`` (episode ``i`` of round ``r``: ``k = r * num_envs + i``) resets with
        seed ``seed + k``.
      reset_seeds: instead of ``seed``, the reset seed of each episode (``num_episodes`` of them,
        integers >= 0). The envs of a last, partial round that play no counted episode continue
        from the largest.
      max_episode_steps: optional cap on top of the environments' own time limits.

    Returns:
      dict with ``returns`` (list, per episode), ``successes`` (list, or ``None`` when the
      environment reports no success), ``lengths``, ``reset_seeds``, ``return_mean``,
      ``return_std`` (over episodes), ``return_sem`` (standard error of ``return_mean``),
      ``success_rate`` (or ``None``), ``length_mean``, ``episodes``, and ``timing``: ``wall_s``
      of the whole evaluation, ``policy_s`` spent in policy calls (results fetched),
      ``env_steps`` (every env's steps, those after an episode's end included) and
      ``policy_calls``.
    """
    num_envs = envs.num_envs
    rounds = math.ceil(num_episodes / num_envs)
    reset_seeds = check_reset_seeds(reset_seeds, num_episodes, seed)
    padded = reset_seeds + [max(reset_seeds) + 1 + j
                            for j in range(rounds * num_envs - num_episodes)]
    chunked = obs_horizon is not None
    returns, successes, lengths, reports_success = [], [], [], False
    calls, env_steps, policy_s, start = 0, 0, 0.0, time.perf_counter()
    for r in range(rounds):
        obs, _ = envs.reset(seed=padded[r * num_envs:(r + 1) * num_envs])
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
            if (reported := _success(info, num_envs)) is not None:
                reports_success = True
                success |= active & reported
            done |= terminated | truncated
            if max_episode_steps is not None:
                done |= length >= max_episode_steps
            history.append(obs_fn(obs))
        returns.extend(ret.tolist())
        successes.extend(success.tolist())
        lengths.extend(length.tolist())
    returns, successes, lengths = (x[:num_episodes] for x in (returns, successes, lengths))
    return {**episode_summary(returns, successes if reports_success else None, lengths,
                              reset_seeds),
            "timing": {"wall_s": time.perf_counter() - start, "policy_s": policy_s,
                       "env_steps": env_steps, "policy_calls": calls}}


def check_reset_seeds(reset_seeds: Sequence[int] | None, num_episodes: int,
                      seed: int = 0) -> list[int]:
    """The reset seed of each of ``num_episodes`` episodes: ``reset_seeds`` checked, or
    ``seed + k`` for episode ``k``. Raises ``ValueError`` naming what was wrong."""
    if reset_seeds is None:
        return [seed + k for k in range(num_episodes)]
    seeds = list(reset_seeds)
    if len(seeds) != num_episodes:
        raise ValueError(f"Invalid reset_seeds: {len(seeds)} seeds for {num_episodes} episodes; "
                         "give one per episode.")
    if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in seeds):
        raise ValueError(f"Invalid reset_seeds {seeds}; expected integers >= 0.")
    return [int(s) for s in seeds]


def standard_error(values) -> float | None:
    """The standard error of ``mean(values)``: ``std(values, ddof=1) / sqrt(n)``; ``None`` for
    fewer than two values (no spread to estimate it from)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(values.size))


def episode_summary(returns, successes, lengths, reset_seeds) -> dict:
    """Per-episode lists and their means (``successes=None``: the env defines no success)."""
    returns = [float(x) for x in returns]
    return {"returns": returns, "successes": None if successes is None else
            [bool(x) for x in successes], "lengths": [int(x) for x in lengths],
            "reset_seeds": [int(x) for x in reset_seeds],
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "return_sem": standard_error(returns),
            "success_rate": None if successes is None else float(np.mean(successes)),
            "length_mean": float(np.mean(lengths)), "episodes": len(returns)}


def normalized_summary(scores) -> dict:
    """``normalized_scores`` (per episode), their mean, standard deviation and standard error."""
    scores = np.asarray(scores, np.float64)
    return {"normalized_scores": scores.tolist(), "normalized_score": float(scores.mean()),
            "normalized_score_std": float(scores.std()),
            "normalized_score_sem": standard_error(scores)}


def _success(info: dict, num_envs: int) -> np.ndarray | None:
    """This step's success per env, ``None`` if no env reported one."""
    if "success" not in info:
        return None
    value = np.asarray(info["success"], bool).reshape(num_envs)
    mask = np.asarray(info.get("_success", np.ones(num_envs, bool)), bool).reshape(num_envs)
    return value & mask


PER_EPISODE = ("returns", "successes", "normalized_scores", "reset_seeds")


def _without_episodes(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in PER_EPISODE}


def sem_key(key: str) -> str:
    """The standard error's key of a mean's: ``normalized_score_sem``, ``return_sem``."""
    return key.removesuffix("_mean") + "_sem"


def format_score(entry: dict, key: str) -> str:
    """``"19.1 ± 2.3 s.e."``: an evaluation's mean ``key`` and its standard error over episodes
    (the mean alone when it has none)."""
    sem = entry.get(sem_key(key))
    return f"{entry[key]:.1f}" + ("" if sem is None else f" ± {sem:.1f} s.e.")


def format_success(entry: dict, prefix: str = ", ") -> str:
    """``", success rate 0.80"``, or nothing for an environment without success."""
    rate = entry.get("success_rate")
    return "" if rate is None else f"{prefix}success rate {rate:.2f}"


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
        """The last and the best evaluation (without the per-episode lists) and the running
        average of the last ``average_last``: its metric, the metric's standard error (from the
        evaluations' own, which are independent: ``sqrt(sum sem_i^2) / n``), and the success rate
        (``None`` unless every evaluation averaged has one)."""
        if not self.history:
            return {}
        key = "normalized_score" if "normalized_score" in self.history[-1] else "return_mean"
        last = self.history[-1]
        best = max(self.history, key=lambda e: e[key])
        recent = self.history[-self.average_last:]
        sems = [e.get(sem_key(key)) for e in recent]
        rates = [e.get("success_rate") for e in recent]
        return {
            "metric": key,
            "last": _without_episodes(last),
            "best": _without_episodes(best),
            "running_average": {
                key: float(np.mean([e[key] for e in recent])),
                sem_key(key): (None if None in sems else
                               float(math.sqrt(sum(x * x for x in sems)) / len(sems))),
                "success_rate": None if None in rates else float(np.mean(rates)),
                "gradient_steps": [e["gradient_step"] for e in recent],
                "evaluations": len(recent),
            },
        }

    def write(self) -> None:
        """Write ``eval.json`` through a temporary file and a rename: a failed write
        (:class:`cdp_jax.files.WriteError`) leaves the previous file as it was."""
        files.write_json(self.path, {"summary": self.summary(), "evaluations": self.history})
