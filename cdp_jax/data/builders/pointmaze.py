"""PointMaze datasets made the way D4RL maze2d and Minari's ``D4RL/pointmaze`` were made.

A planner computes breadth-first distances over the maze cells to the goal cell; a PD controller
steers the ball to the centre of the next cell on a shortest path (to the goal itself once in the
goal cell); Gaussian action noise is added and clipped to the action box ``[-1, 1]^2``. The task is
continuing: when the goal is reached the episode is cut there (``truncation``, never
``termination``: the ball keeps its state) and a new goal cell is drawn, so consecutive
episodes join up in state. Episodes are also cut after ``max_episode_steps`` and at the
end of the recording.

Why a stateless waypoint: two adjacent cells form a convex 1x2 rectangle, so the straight line from
anywhere in the current cell to the next cell's centre stays inside free space; the controller needs
no memory and replays exactly.

Observations are the env's dict (``observation`` = ``[x, y, vx, vy]``, ``achieved_goal``,
``desired_goal``); rewards are the env's (``sparse``: 1 within 0.45 of the goal). The evaluation env
is the registered ``PointMaze_<Maze>-v3`` (300 steps, continuing, fixed goal), on which
``ref_min_score`` (uniform random actions) and ``ref_max_score`` (the noise-free controller) are
measured, so ``minari.get_normalized_score`` and :func:`cdp_jax.data.minari.normalized_score` work.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from cdp_jax.data.builders.writer import (
    check_target,
    directory_size,
    episode_buffer,
    reported_interrupts,
    write_dataset,
)
from cdp_jax.data.minari import _register_robotics

MAZES = {"umaze": "UMaze", "open": "Open", "medium": "Medium", "large": "Large"}
REWARD_TYPES = ("sparse", "dense")
GOAL_RADIUS = 0.45  # the env's success radius (gymnasium_robotics maze_v4)
OBS_KEYS_ORDER = ("observation", "achieved_goal", "desired_goal")


def env_id(maze: str, reward_type: str = "sparse") -> str:
    """The gymnasium-robotics id, e.g. ``PointMaze_UMaze-v3`` / ``PointMaze_UMazeDense-v3``."""
    if maze not in MAZES:
        raise ValueError(f"maze must be one of {sorted(MAZES)}, got {maze!r}")
    if reward_type not in REWARD_TYPES:
        raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
    return f"PointMaze_{MAZES[maze]}{'Dense' if reward_type == 'dense' else ''}-v3"


class WaypointController:
    """Stateless PD controller to a goal through the maze: ``a = clip(kp (w - p) - kd v, -1, 1)``.

    ``w`` is the centre of the next cell on a shortest (4-connected) path from the ball's cell to
    the goal's cell, or the goal itself once the ball is in the goal cell. Distances are computed by
    BFS once per goal cell and cached.
    """

    def __init__(self, maze, kp: float = 10.0, kd: float = 1.0):
        self.maze = maze
        self.kp, self.kd = kp, kd
        self.free = np.asarray([[str(c) != "1" for c in row] for row in maze.maze_map])
        self._distances: dict[tuple[int, int], np.ndarray] = {}
        self._next_centre: dict[tuple[int, int], np.ndarray] = {}

    def cell(self, xy: np.ndarray) -> tuple[int, int]:
        # maze.cell_xy_to_rowcol inlined: this runs twice per environment step.
        scale = self.maze.maze_size_scaling
        i = math.floor((self.maze.y_map_center - float(xy[1])) / scale)
        j = math.floor((float(xy[0]) + self.maze.x_map_center) / scale)
        # Contact can push the ball a hair past a wall face; clamp to valid indices.
        rows, cols = self.free.shape
        return min(max(i, 0), rows - 1), min(max(j, 0), cols - 1)

    def distances(self, goal_cell: tuple[int, int]) -> np.ndarray:
        """BFS steps from every cell to ``goal_cell`` (``inf`` for walls / unreachable cells)."""
        if goal_cell not in self._distances:
            dist = np.full(self.free.shape, np.inf)
            dist[goal_cell] = 0.0
            queue = deque([goal_cell])
            while queue:
                i, j = queue.popleft()
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    n = (i + di, j + dj)
                    if (0 <= n[0] < dist.shape[0] and 0 <= n[1] < dist.shape[1]
                            and self.free[n] and dist[n] == np.inf):
                        dist[n] = dist[i, j] + 1.0
                        queue.append(n)
            self._distances[goal_cell] = dist
        return self._distances[goal_cell]

    def next_centres(self, goal_cell: tuple[int, int]) -> np.ndarray:
        """``(rows, cols, 2)``: centre of the next cell towards ``goal_cell``; NaN where there is
        none (the goal cell itself, walls, cells cut off from the goal)."""
        if goal_cell not in self._next_centre:
            dist = self.distances(goal_cell)
            table = np.full(dist.shape + (2,), np.nan)
            for i, j in zip(*np.nonzero(np.isfinite(dist) & (dist > 0)), strict=True):
                # Ties go to the first neighbour in this fixed order, so the plan is deterministic.
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    n = (i + di, j + dj)
                    if (0 <= n[0] < dist.shape[0] and 0 <= n[1] < dist.shape[1]
                            and dist[n] == dist[i, j] - 1.0):
                        table[i, j] = self.maze.cell_rowcol_to_xy(np.asarray(n))
                        break
            self._next_centre[goal_cell] = table
        return self._next_centre[goal_cell]

    def waypoint(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Where to steer now: the next cell's centre, or ``goal`` once in the goal's cell."""
        target = self.next_centres(self.cell(goal))[self.cell(pos)]
        # NaN: in the goal cell (or pushed into a wall cell by contact): head for the goal itself.
        return goal if target[0] != target[0] else target

    def __call__(self, obs: dict) -> np.ndarray:
        state = obs["observation"]
        target = self.waypoint(state[:2], obs["desired_goal"])
        action = self.kp * (target - state[:2]) - self.kd * state[2:4]
        return np.minimum(np.maximum(action, -1.0), 1.0)  # np.clip's overhead dominates here


def _new_goal(maze, rng: np.random.Generator, avoid: np.ndarray, noise: float) -> np.ndarray:
    """A goal cell centre plus uniform noise (as the env draws goals), in a cell other than
    ``avoid``'s."""
    cells = maze.unique_goal_locations
    while True:
        goal = np.array(cells[rng.integers(len(cells))], dtype=np.float64)
        goal += rng.uniform(-noise, noise, size=2) * maze.maze_size_scaling
        if np.linalg.norm(goal - avoid) > 2 * GOAL_RADIUS:
            return goal


def collect(
    maze: str = "umaze",
    num_steps: int = 200_000,
    seed: int = 0,
    *,
    action_noise: float = 0.5,
    max_episode_steps: int = 1000,
    reward_type: str = "sparse",
    progress: Callable[[int], None] | None = None,
):
    """Run the noisy controller for ``num_steps`` steps; return ``(env, episodes, stats)``.

    ``episodes`` are ``EpisodeBuffer``s; ``stats`` has ``num_goals`` (episodes ended by a goal),
    ``success_rate`` (goals reached / episodes that ended before the recording stopped).
    ``progress(k)`` is called every 1000 steps with the number of new steps.
    """
    import gymnasium as gym

    _register_robotics()
    if num_steps < 1 or max_episode_steps < 1:
        raise ValueError(f"num_steps and max_episode_steps must be >= 1, got {num_steps}, "
                         f"{max_episode_steps}")
    env = gym.make(env_id(maze, reward_type), continuing_task=True, reset_target=False,
                   max_episode_steps=max_episode_steps)
    core = env.unwrapped  # our loop does its own time limit and goal switching
    controller = WaypointController(core.maze)
    rng = np.random.default_rng(seed)
    obs, _ = core.reset(seed=seed)
    episodes, ep, num_goals, ended = [], None, 0, 0
    for step in range(num_steps):
        if ep is None:
            ep = {k: [obs[k]] for k in OBS_KEYS_ORDER} | {"act": [], "rew": [], "trunc": []}
        action = controller(obs) + action_noise * rng.standard_normal(2)
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        obs, reward, _, _, info = core.step(action)
        for k in OBS_KEYS_ORDER:
            ep[k].append(obs[k])
        ep["act"].append(action)
        ep["rew"].append(reward)
        done = info["success"] or len(ep["act"]) >= max_episode_steps
        ep["trunc"].append(done or step == num_steps - 1)
        if done or step == num_steps - 1:
            steps = len(ep["act"])
            episodes.append(episode_buffer(
                len(episodes),
                {k: np.asarray(ep[k], dtype=np.float64) for k in OBS_KEYS_ORDER},
                np.asarray(ep["act"], dtype=np.float32),
                np.asarray(ep["rew"]),
                np.zeros(steps, dtype=bool),
                np.asarray(ep["trunc"]),
                seed=seed if not episodes else None,
            ))
            ended += int(done)
            num_goals += int(info["success"])
            ep = None
            if done:
                core.goal = _new_goal(
                    core.maze, rng, obs["achieved_goal"], core.position_noise_range
                )
                core.update_target_site_pos()
                obs = dict(obs, desired_goal=core.goal.copy())
        if progress is not None and (step + 1) % 1000 == 0:
            progress(1000)
    if progress is not None and num_steps % 1000:
        progress(num_steps % 1000)
    stats = {"num_goals": num_goals, "success_rate": num_goals / max(ended, 1)}
    return env, episodes, stats


def reference_return(
    maze: str, policy: str, num_episodes: int = 100, seed: int = 0, reward_type: str = "sparse"
) -> np.ndarray:
    """``(num_episodes,)`` returns on the evaluation env of ``policy`` in {"random", "controller"}.

    ``"random"`` draws uniform actions in ``[-1, 1]^2``; ``"controller"`` is the noise-free
    :class:`WaypointController`. Episodes follow the registered time limit (300 steps on umaze).
    """
    import gymnasium as gym

    _register_robotics()
    if policy not in ("random", "controller"):
        raise ValueError(f"policy must be 'random' or 'controller', got {policy!r}")
    env = gym.make(env_id(maze, reward_type))
    controller = WaypointController(env.unwrapped.maze)
    rng = np.random.default_rng(seed)
    returns = np.zeros(num_episodes)
    for e in range(num_episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        done = False
        while not done:
            action = controller(obs) if policy == "controller" else rng.uniform(-1, 1, 2)
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[e] += reward
            done = terminated or truncated
    env.close()
    return returns


def build(
    maze: str = "umaze",
    num_steps: int = 200_000,
    seed: int = 0,
    dataset_id: str | None = None,
    *,
    action_noise: float = 0.5,
    max_episode_steps: int = 1000,
    reward_type: str = "sparse",
    num_reference_episodes: int = 100,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict:
    """Collect and write a PointMaze dataset; return a summary dict.

    Args:
        maze: one of ``MAZES`` (``umaze``, ``open``, ``medium``, ``large``).
        num_steps: environment steps recorded.
        seed: seeds the env reset, the goal draws and the action noise (same seed, same dataset).
        dataset_id: Minari id; default ``cdp/pointmaze/<maze>[-dense]-v0``.
        action_noise: std of the Gaussian noise added to the controller's action before clipping.
        max_episode_steps: an episode is cut after this many steps without reaching its goal.
        reward_type: ``sparse`` or ``dense`` (the env's reward, also that of the evaluation env).
        num_reference_episodes: evaluation episodes for each of ``ref_min_score`` /
            ``ref_max_score``.
        overwrite: replace an existing dataset with this id.
        progress: called with the number of new steps, every 1000 steps.
        stage: called with the name of each phase after collection ("reference scores",
            "writing"), e.g. to label a progress bar.

    Returns:
        ``dict(dataset_id, path, num_steps, num_episodes, size_bytes, success_rate, ref_min_score,
        ref_max_score, seconds, cpu_seconds)``: ``seconds`` is wall time, ``cpu_seconds`` this
        process's CPU time (what the build costs on an idle machine: it is single-threaded).
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    if dataset_id is None:
        dataset_id = f"cdp/pointmaze/{maze}{'-dense' if reward_type == 'dense' else ''}-v0"
    env_id(maze, reward_type)  # validates maze / reward_type before any work
    check_target(dataset_id, overwrite)
    with reported_interrupts(dataset_id):  # one line, saying what was written
        env, episodes, stats = collect(
            maze, num_steps, seed, action_noise=action_noise, max_episode_steps=max_episode_steps,
            reward_type=reward_type, progress=progress,
        )
        if stage is not None:
            stage("reference scores")
        ref_min = float(reference_return(maze, "random", num_reference_episodes, seed,
                                         reward_type).mean())
        ref_max = float(reference_return(maze, "controller", num_reference_episodes, seed + 1,
                                         reward_type).mean())
        if stage is not None:
            stage("writing")
        path = write_dataset(
            dataset_id, episodes, env=env, eval_env=env_id(maze, reward_type),
            ref_min_score=ref_min, ref_max_score=ref_max, overwrite=overwrite,
            algorithm_name="BFS waypoint PD controller + Gaussian action noise",
            description=(
                f"PointMaze {maze} ({reward_type} reward), {num_steps} steps: BFS waypoint PD "
                "controller "
                f"with action noise std {action_noise}, new goal on success (truncation), episodes cut "
                f"at {max_episode_steps} steps; seed {seed}. Built by cdp_jax."
            ),
        )
        env.close()
        return {
            "dataset_id": dataset_id, "path": str(path), "num_steps": num_steps,
            "num_episodes": len(episodes), "size_bytes": directory_size(path),
            "success_rate": stats["success_rate"], "ref_min_score": ref_min, "ref_max_score": ref_max,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu,
        }
