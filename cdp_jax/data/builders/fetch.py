"""Scripted manipulation demonstrations for gymnasium-robotics Fetch (Push, PickAndPlace).

A waypoint controller moves the gripper through the phases of the task with a proportional law on
the mocap position (``action[:3] = clip(gain * (target - grip), -1, 1)``, the env moving the mocap
by ``0.05 * action[:3]`` per step) and Gaussian noise on the commanded motion:

* ``pickandplace``: approach (above the block, gripper open), descend, grasp (close for a few
  steps), lift, carry (to the goal, gripper closed), then release (open and back off) when the
  goal is on the table, or hold when it is in the air. A block lost on the way sends the
  controller back to approach.
* ``push`` (gripper blocked closed): approach a point behind the block on the goal line (raised),
  descend, push along the line; a block that slid off the line (or a gripper that got ahead of it)
  sends it back to approach.

Episodes are the env's 50 steps (``truncation`` at the end, never ``termination``); the dict
observations (``observation`` 25-D, ``achieved_goal``, ``desired_goal``) are kept, so the default
flattening is ``observation`` then ``desired_goal`` (28-D). Only successful episodes are written by
default (as curated demonstration sets are); the expert's success rate over all attempts is
measured and returned. Success is Fetch's ``is_success`` (block within 5 cm of the goal) at any
step; the rate at the final step is reported too.

The evaluation env is the registered ``Fetch<Task>-v4`` wrapped in :class:`SuccessInfo`, which
copies ``info["is_success"]`` to ``info["success"]`` (what :mod:`cdp_jax.evaluation` reads; Fetch's
sparse reward is -1 / 0, so "any positive reward" would never count a success). The wrapper is
recorded in the dataset's env spec, so ``dataset.make_env()`` rebuilds it. ``ref_min_score`` is the
mean return of uniform random actions, ``ref_max_score`` that of the noise-free controller.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from cdp_jax.data.builders.writer import (
    check_target,
    directory_size,
    episode_buffer,
    reported_interrupts,
    write_dataset,
)
from cdp_jax.data.minari import _register_robotics

TASKS = {"push": "FetchPush-v4", "pickandplace": "FetchPickAndPlace-v4"}
OBS_KEYS_ORDER = ("observation", "achieved_goal", "desired_goal")
# Push: lead of the tracked point, gripper-block contact distance, distance counted as arrived,
# lateral offset beyond which the contact is lost (the block is 5 cm wide).
PUSH_STEP, PUSH_CONTACT, PUSH_DONE, PUSH_ACROSS = 0.04, 0.04, 0.02, 0.035
BLOCK_REST_Z = 0.4247  # block centre height resting on the table (the envs' height_offset)

# Phases of the controller (ints, so a phase trace is an array).
APPROACH, DESCEND, GRASP, LIFT, CARRY, RELEASE, PUSH = range(7)
PHASE_NAMES = ("approach", "descend", "grasp", "lift", "carry", "release", "push")


def env_id(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"Unknown Fetch task {task!r}; expected one of {sorted(TASKS)}.")
    return TASKS[task]


class SuccessInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds ``info["success"] = bool(info["is_success"])`` to every ``step``."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = bool(info.get("is_success", 0.0) > 0.5)
        return obs, reward, terminated, truncated, info


def make_env(task: str, **kwargs) -> gym.Env:
    """``Fetch<Task>-v4`` wrapped in :class:`SuccessInfo` (the evaluation env of the datasets)."""
    _register_robotics()
    return SuccessInfo(gym.make(env_id(task), **kwargs))


class WaypointController:
    """Phase-based scripted expert for one episode at a time (call :meth:`reset` per episode).

    Observation layout (Fetch): ``grip = obs[0:3]``, ``block = obs[3:6]``, finger positions
    ``obs[9:11]``; actions are ``(dx, dy, dz, gripper)`` in ``[-1, 1]``, gripper ``+1`` opens.

    Args:
      task: ``"push"`` or ``"pickandplace"``.
      gain: proportional gain from position error (m) to action.
      noise: std of Gaussian noise on ``action[:3]`` (before clipping).
      rng: noise generator (``None``: noise-free).
    """

    def __init__(self, task: str, gain: float = 15.0, noise: float = 0.0,
                 rng: np.random.Generator | None = None):
        env_id(task)
        self.task, self.gain, self.noise, self.rng = task, gain, noise, rng
        self.reset()

    def reset(self) -> None:
        self.phase = APPROACH
        self.grasp_steps = 0

    def _move(self, grip: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
        delta = self.gain * (target - grip)
        if self.noise and self.rng is not None:
            delta = delta + self.noise * self.rng.standard_normal(3)
        return np.append(np.clip(delta, -1.0, 1.0), gripper).astype(np.float32)

    def __call__(self, obs: dict) -> np.ndarray:
        state, goal = obs["observation"], np.asarray(obs["desired_goal"])
        grip, block = state[0:3], state[3:6]
        if self.task == "push":
            return self._push(grip, block, goal)
        return self._pick(grip, block, goal, state[9:11])

    # Pick and place: the block (5 cm cube) is grasped at its centre.
    def _pick(self, grip, block, goal, fingers) -> np.ndarray:
        rel = block - grip
        held = np.linalg.norm(rel) < 0.03 and fingers.max() < 0.035
        if self.phase in (LIFT, CARRY) and not held:
            self.phase = APPROACH  # dropped it
        if self.phase == APPROACH:
            target = block + np.array([0.0, 0.0, 0.06])
            if np.linalg.norm(target - grip) < 0.015:
                self.phase = DESCEND
            return self._move(grip, target, 1.0)
        if self.phase == DESCEND:
            if np.linalg.norm(rel[:2]) > 0.02:
                self.phase = APPROACH
                return self._move(grip, block + np.array([0.0, 0.0, 0.06]), 1.0)
            if np.linalg.norm(rel) < 0.008:
                self.phase, self.grasp_steps = GRASP, 0
            return self._move(grip, block, 1.0)
        if self.phase == GRASP:
            self.grasp_steps += 1
            if self.grasp_steps >= 3:
                self.phase = LIFT
            return self._move(grip, block, -1.0)
        if self.phase == LIFT:
            target = np.append(grip[:2], BLOCK_REST_Z + 0.05)
            if block[2] >= BLOCK_REST_Z + 0.03:
                self.phase = CARRY
            return self._move(grip, target, -1.0)
        if self.phase == CARRY:
            # Aim the gripper so that the block (offset rel from it) lands on the goal.
            on_table = goal[2] < BLOCK_REST_Z + 0.01
            if np.linalg.norm(block - goal) < 0.015 and on_table:
                self.phase = RELEASE
            return self._move(grip, goal - rel, -1.0)
        # RELEASE: open, then back off upwards.
        return self._move(grip, np.array([grip[0], grip[1], goal[2] + 0.08]), 1.0)

    # Push: the gripper stays closed; contact point behind the block on the block -> goal line.
    def _push(self, grip, block, goal) -> np.ndarray:
        to_goal = goal[:2] - block[:2]
        dist = np.linalg.norm(to_goal)
        d = to_goal / max(dist, 1e-6)
        behind = block[:2] - 0.06 * d
        rel = grip[:2] - block[:2]
        along, across = rel @ d, abs(rel[0] * d[1] - rel[1] * d[0])
        if self.phase == PUSH and (across > PUSH_ACROSS or along > -0.015) and dist > PUSH_DONE:
            self.phase = APPROACH
        if self.phase == APPROACH:
            # Rise clear of the block before moving sideways, so the approach cannot knock it.
            high = block[2] + 0.08  # the fingers reach ~3 cm below the grip site
            xy = behind if grip[2] > block[2] + 0.06 else grip[:2]
            if np.linalg.norm(behind - grip[:2]) < 0.01:
                self.phase = DESCEND
            return self._move(grip, np.append(xy, high), 0.0)
        if self.phase == DESCEND:
            target = np.append(behind, block[2])
            if np.linalg.norm(target[:2] - grip[:2]) > 0.02:
                self.phase = APPROACH
            elif abs(grip[2] - block[2]) < 0.01:
                self.phase = PUSH
            return self._move(grip, target, 0.0)
        # PUSH: track a point just past the contact on the block -> goal line, so the block moves
        # forward while the gripper re-centres behind it; slow down over the last centimetres.
        target = np.append(block[:2] + (min(dist, PUSH_STEP) - PUSH_CONTACT) * d, block[2])
        if dist < PUSH_DONE:
            target = grip  # there (the success radius is 5 cm): hold still
        return self._move(grip, target, 0.0)


def run_episode(env: gym.Env, controller: WaypointController, seed: int,
                policy: Callable | None = None) -> dict:
    """One episode with ``controller`` (or ``policy(obs) -> action``); arrays and success flags."""
    obs, _ = env.reset(seed=seed)
    controller.reset()
    rec = {k: [obs[k]] for k in OBS_KEYS_ORDER} | {"act": [], "rew": []}
    success_any, done, info = False, False, {}
    while not done:
        action = controller(obs) if policy is None else policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        for k in OBS_KEYS_ORDER:
            rec[k].append(obs[k])
        rec["act"].append(action)
        rec["rew"].append(reward)
        success_any |= bool(info["is_success"] > 0.5)
        done = terminated or truncated
    return {
        "obs": {k: np.asarray(rec[k], dtype=np.float64) for k in OBS_KEYS_ORDER},
        "actions": np.asarray(rec["act"], dtype=np.float32),
        "rewards": np.asarray(rec["rew"], dtype=np.float64),
        "success": success_any,
        "final_success": bool(info["is_success"] > 0.5),
        "return": float(np.sum(rec["rew"])),
    }


def collect(task: str = "pickandplace", num_demos: int = 200, seed: int = 0, *,
            action_noise: float = 0.1, keep_failures: bool = False, max_attempts: int | None = None,
            progress: Callable[[int], None] | None = None):
    """Run the noisy controller until ``num_demos`` episodes are recorded.

    Returns ``(env, episodes, stats)``: ``episodes`` are ``EpisodeBuffer``s; ``stats`` holds
    ``attempts``, ``success_rate`` (success at any step, over all attempts), ``final_success_rate``
    (success at the last step) and ``return_mean``. Attempt ``i`` resets with seed ``seed + i``.
    ``progress(1)`` is called per recorded episode.
    """
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}")
    max_attempts = max_attempts or 10 * num_demos
    env = make_env(task)
    rng = np.random.default_rng(seed)
    controller = WaypointController(task, noise=action_noise, rng=rng)
    episodes, successes, finals, returns = [], [], [], []
    while len(episodes) < num_demos:
        if len(successes) >= max_attempts:
            raise RuntimeError(f"only {len(episodes)} successful demonstrations in {max_attempts} "
                               f"attempts (success rate {np.mean(successes):.2f}); lower "
                               "action_noise or pass keep_failures=True")
        ep = run_episode(env, controller, seed + len(successes))
        successes.append(ep["success"])
        finals.append(ep["final_success"])
        returns.append(ep["return"])
        if ep["success"] or keep_failures:
            steps = len(ep["actions"])
            episodes.append(episode_buffer(
                len(episodes), ep["obs"], ep["actions"], ep["rewards"],
                np.zeros(steps, dtype=bool), np.arange(steps) == steps - 1,
                seed=seed + len(successes) - 1,
            ))
            if progress is not None:
                progress(1)
    stats = {"attempts": len(successes), "success_rate": float(np.mean(successes)),
             "final_success_rate": float(np.mean(finals)), "return_mean": float(np.mean(returns))}
    return env, episodes, stats


def reference_returns(task: str, policy: str, num_episodes: int = 50, seed: int = 0) -> dict:
    """Mean return and success rates of ``policy`` in {"random", "controller"} on the eval env.

    ``"controller"`` is the noise-free :class:`WaypointController`, ``"random"`` uniform actions.
    """
    if policy not in ("random", "controller"):
        raise ValueError(f"policy must be 'random' or 'controller', got {policy!r}")
    env = make_env(task)
    rng = np.random.default_rng(seed)
    controller = WaypointController(task)
    random_policy = lambda obs: rng.uniform(-1.0, 1.0, 4).astype(np.float32)
    eps = [run_episode(env, controller, seed + i, None if policy == "controller" else random_policy)
           for i in range(num_episodes)]
    env.close()
    return {"return_mean": float(np.mean([e["return"] for e in eps])),
            "success_rate": float(np.mean([e["success"] for e in eps])),
            "final_success_rate": float(np.mean([e["final_success"] for e in eps]))}


def build(task: str = "pickandplace", num_demos: int = 200, seed: int = 0,
          dataset_id: str | None = None, *, action_noise: float = 0.1, keep_failures: bool = False,
          num_reference_episodes: int = 50, overwrite: bool = False,
          progress: Callable[[int], None] | None = None,
          stage: Callable[[str], None] | None = None) -> dict:
    """Collect and write a Fetch demonstration dataset; return a summary dict.

    Args:
        task: ``"push"`` or ``"pickandplace"``.
        num_demos: episodes written (successful ones unless ``keep_failures``).
        seed: seeds the env resets (attempt ``i``: ``seed + i``) and the action noise.
        dataset_id: Minari id; default ``cdp/fetch/<task>-v0``.
        action_noise: std of Gaussian noise on the commanded motion ``action[:3]``.
        keep_failures: also write unsuccessful episodes.
        num_reference_episodes: episodes for ``ref_min_score`` (random) / ``ref_max_score``
            (noise-free controller), on seeds disjoint from the demonstrations'.
        overwrite: replace an existing dataset with this id.
        progress: called with 1 per recorded episode.
        stage: called with the name of each phase after collection ("reference scores",
            "writing").

    Returns:
        ``dict(dataset_id, path, num_episodes, num_steps, attempts, success_rate,
        final_success_rate, size_bytes, ref_min_score, ref_max_score, random_success_rate,
        controller_success_rate, seconds, cpu_seconds)``: ``seconds`` is wall time,
        ``cpu_seconds`` this process's CPU time.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    env_id(task)
    dataset_id = dataset_id or f"cdp/fetch/{task}-v0"
    check_target(dataset_id, overwrite)
    with reported_interrupts(dataset_id):  # one line, saying what was written
        env, episodes, stats = collect(task, num_demos, seed, action_noise=action_noise,
                                       keep_failures=keep_failures, progress=progress)
        if stage is not None:
            stage("reference scores")
        ref_seed = seed + 10_000_000  # evaluation-style seeds, disjoint from the demonstrations
        ref_min = reference_returns(task, "random", num_reference_episodes, ref_seed)
        ref_max = reference_returns(task, "controller", num_reference_episodes, ref_seed)
        if stage is not None:
            stage("writing")
        path = write_dataset(
            dataset_id, episodes, env=env, eval_env=env,
            ref_min_score=ref_min["return_mean"], ref_max_score=ref_max["return_mean"],
            overwrite=overwrite, algorithm_name="scripted waypoint controller + Gaussian action noise",
            description=(
                f"{env_id(task)} scripted demonstrations: {len(episodes)} "
                f"{'episodes' if keep_failures else 'successful episodes'} of 50 steps from a "
                f"phase-based waypoint controller with action noise std {action_noise} "
                f"(expert success rate {stats['success_rate']:.3f} over {stats['attempts']} "
                f"attempts); seed {seed}. Built by cdp_jax."
            ),
        )
        env.close()
        return {
            "dataset_id": dataset_id, "path": str(path), "num_episodes": len(episodes),
            "num_steps": int(sum(len(e.actions) for e in episodes)), **stats,
            "size_bytes": directory_size(path),
            "ref_min_score": ref_min["return_mean"], "ref_max_score": ref_max["return_mean"],
            "random_success_rate": ref_min["success_rate"],
            "controller_success_rate": ref_max["success_rate"],
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu,
        }
