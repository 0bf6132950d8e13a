"""Import an original D4RL HDF5 file into a local Minari dataset, with D4RL's reference scores.

For users who have the D4RL files (``hopper_medium-v2.hdf5``, ...): the file becomes a Minari
dataset that :func:`cdp_jax.data.minari.load` reads like any other, and whose ``ref_min_score`` /
``ref_max_score`` are D4RL's published random / expert returns for the task (``d4rl/infos.py``), so
normalised scores match the literature.

The file layout (D4RL's ``get_dataset()``): flat per-step arrays ``observations (N, obs_dim)``,
``actions (N, act_dim)``, ``rewards (N,)``, ``terminals (N,)``, ``timeouts (N,)``, optionally
``next_observations (N, obs_dim)`` and ``infos/*`` / ``metadata/*`` (not imported). Episodes are
split after every step with ``terminals`` or ``timeouts`` set (a step with both counts as a
termination, the dataset convention); steps after the last such flag form a final episode cut by
the end of the recording (truncation). An episode's final observation is
``next_observations[last]`` when the file has them. Without them it is unknown: a terminated
episode gets its last observation repeated (never bootstrapped from, so harmless), and the last
step of a truncated episode is dropped (as ``d4rl.qlearning_dataset`` does), so every stored
transition is exact.

Hopper / HalfCheetah / Walker2d files are recorded with the gymnasium ``*-v5`` env (same
observation and action layout as D4RL's mujoco-py ``-v3`` envs, but a different simulator
version: returns are close, not identical); other tasks are recorded with their spaces only (no
env), since gymnasium-robotics' AntMaze / Kitchen / Maze2d observations differ from D4RL's.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from cdp_jax import files
from cdp_jax.data.builders.writer import check_target, directory_size, episode_buffer, write_dataset
from cdp_jax.data.dataset import DatasetCorruptError

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

# D4RL's REF_MIN_SCORE / REF_MAX_SCORE (d4rl/infos.py): random and expert returns per task family.
# Every dataset of a family shares them (e.g. hopper-{random,medium,...}-v{0,1,2}).
REFERENCE_SCORES = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "kitchen": (0.0, 4.0),
    "maze2d-open": (0.01, 20.66),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "maze2d-open-dense": (11.17817, 27.166538620695782),
    "maze2d-umaze-dense": (68.537689, 193.66285642381482),
    "maze2d-medium-dense": (44.264742, 297.4552547777125),
    "maze2d-large-dense": (30.569041, 303.4857382709002),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
    "door": (-56.512833, 2880.5693087298737),
}

# Gymnasium envs with D4RL's observation / action layout, recorded as the dataset's env.
GYMNASIUM_ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5",
                  "walker2d": "Walker2d-v5"}


class D4RLFormatError(ValueError):
    """The file is not in D4RL's layout (the message names what is missing or inconsistent)."""


def task_family(task: str) -> str:
    """``"hopper-medium-replay-v2"`` -> ``"hopper"``; ``"maze2d-umaze-dense-v1"`` ->
    ``"maze2d-umaze-dense"``; ``"antmaze-large-play-v2"`` -> ``"antmaze"``."""
    name = re.sub(r"-v\d+$", "", task.strip().lower().replace("_", "-"))
    if name.startswith("maze2d-"):
        maze = name.split("-")[1]
        return f"maze2d-{maze}-dense" if name.endswith("-dense") else f"maze2d-{maze}"
    head = name.split("-")[0]
    if head in REFERENCE_SCORES:
        return head
    raise ValueError(f"No D4RL reference scores for task {task!r}; known task families: "
                     f"{sorted(REFERENCE_SCORES)} (e.g. 'hopper-medium-v2').")


def reference_scores(task: str) -> tuple[float, float]:
    """D4RL's ``(ref_min_score, ref_max_score)`` for a task name such as ``hopper-medium-v2``."""
    return REFERENCE_SCORES[task_family(task)]


def task_from_filename(path: str | Path) -> str:
    """D4RL file names use ``_`` where task names use ``-``: ``hopper_medium_replay-v2.hdf5`` ->
    ``hopper-medium-replay-v2``."""
    return Path(path).name.removesuffix(".hdf5").removesuffix(".h5").replace("_", "-")


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The flat D4RL arrays of ``path`` (``REQUIRED_KEYS`` and ``next_observations`` if present).

    Raises :class:`D4RLFormatError` naming every missing key (and the keys the file has), or
    arrays whose lengths disagree; :class:`cdp_jax.data.dataset.DatasetCorruptError` if h5py
    cannot read the file (truncated, not HDF5, no permission).
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"D4RL file {path} is a directory; pass the .hdf5 file in it.")
    if not path.is_file():
        raise FileNotFoundError(f"D4RL file {path} does not exist.")
    try:
        with h5py.File(path, "r") as f:
            present = sorted(f.keys())
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise D4RLFormatError(
                    f"{path} is not a D4RL dataset file: missing key(s) {missing}; D4RL files "
                    f"hold {list(REQUIRED_KEYS)} (+ optional next_observations, infos/*); this "
                    f"file has {present}.")
            keys = REQUIRED_KEYS + (("next_observations",) if "next_observations" in f else ())
            data = {k: np.asarray(f[k]) for k in keys}
    except (OSError, KeyError) as err:  # h5py: truncated, not HDF5, unreadable, damaged dataset
        todo = (files.disk_cause(err) or "download it again (a truncated download is the usual "
                "cause)")
        raise DatasetCorruptError(
            f"D4RL file {path} is unreadable ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}); nothing was imported. To import it, "
            f"{todo}, then run the import again.") from None
    lengths = {k: v.shape[0] if v.ndim else None for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise D4RLFormatError(f"{path}: arrays have different lengths {lengths}.")
    if data["observations"].ndim != 2 or data["actions"].ndim != 2:
        raise D4RLFormatError(f"{path}: observations and actions must be 2-D (N, dim), got "
                              f"{data['observations'].shape} and {data['actions'].shape}.")
    if lengths["observations"] == 0:
        raise D4RLFormatError(f"{path} holds no steps.")
    return data


def split_episodes(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Episodes of flat D4RL arrays: dicts with ``observations (T + 1, O)``, ``actions (T, A)``,
    ``rewards``, ``terminations``, ``truncations`` (``(T,)``), as the module docstring says."""
    terminals = data["terminals"].astype(bool).reshape(-1)
    timeouts = data["timeouts"].astype(bool).reshape(-1) & ~terminals
    n = terminals.size
    ends = np.flatnonzero(terminals | timeouts)
    if ends.size == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)  # the recording stopped mid-episode: a truncation
    has_next = "next_observations" in data
    episodes, start = [], 0
    for end in ends:
        rows = slice(start, end + 1)
        obs = data["observations"][rows]
        terminated = bool(terminals[end])
        if has_next:
            final = data["next_observations"][end]
        elif terminated:
            final = obs[-1]
        else:  # the final observation of a truncated episode is unknown: drop its last step
            if end == start:
                start = end + 1
                continue
            rows, final, obs = slice(start, end), obs[-1], obs[:-1]
        length = obs.shape[0]
        term = np.zeros(length, bool)
        trunc = np.zeros(length, bool)
        (term if terminated else trunc)[-1] = True
        episodes.append({"observations": np.concatenate([obs, final[None]], axis=0),
                         "actions": data["actions"][rows], "rewards": data["rewards"][rows],
                         "terminations": term, "truncations": trunc})
        start = end + 1
    return episodes


def _spaces_only_env(obs_dim: int, action_dim: int, low: float, high: float):
    import gymnasium as gym

    class SpacesOnly(gym.Env):  # Minari records the spaces; no env spec, nothing to simulate
        observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        action_space = gym.spaces.Box(low, high, (action_dim,), np.float32)

    return SpacesOnly()


def import_file(path: str | Path, task: str | None = None, dataset_id: str | None = None, *,
                overwrite: bool = False) -> dict:
    """Convert a D4RL HDF5 file into Minari dataset ``dataset_id``; return a summary dict.

    Args:
        path: the D4RL ``.hdf5`` file.
        task: D4RL task name (``hopper-medium-v2``) choosing the reference scores and the env;
            default: from the file name (``hopper_medium-v2.hdf5`` -> ``hopper-medium-v2``).
        dataset_id: Minari id; default ``cdp/d4rl/<task>`` (e.g. ``cdp/d4rl/hopper-medium-v2``).
        overwrite: replace an existing dataset with this id.

    Returns:
        ``dict(dataset_id, path, task, num_steps, num_episodes, num_terminated, size_bytes,
        ref_min_score, ref_max_score, env_id, seconds, cpu_seconds)``.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    task = task or task_from_filename(path)
    family = task_family(task)
    ref_min, ref_max = REFERENCE_SCORES[family]
    dataset_id = dataset_id or f"cdp/d4rl/{task.lower().replace('_', '-')}"
    if re.search(r"-v\d+$", dataset_id) is None:
        dataset_id += "-v0"
    check_target(dataset_id, overwrite)
    data = read_arrays(path)
    episodes = split_episodes(data)
    obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    env_id = GYMNASIUM_ENVS.get(family)
    env, obs_dtype = None, np.float32
    if env_id is not None:
        import gymnasium as gym

        env = gym.make(env_id)
        if (env.observation_space.shape != (obs_dim,)
                or env.action_space.shape != (action_dim,)):
            env.close()
            env, env_id = None, None  # a layout we do not know: record the spaces only
        else:
            obs_dtype = env.observation_space.dtype
    if env is None:
        bound = float(np.max(np.abs(data["actions"])))
        env = _spaces_only_env(obs_dim, action_dim, -max(bound, 1.0), max(bound, 1.0))
    buffers = [episode_buffer(i, ep["observations"].astype(obs_dtype),
                              ep["actions"].astype(np.float32), ep["rewards"],
                              ep["terminations"], ep["truncations"])
               for i, ep in enumerate(episodes)]
    out = write_dataset(
        dataset_id, buffers, env=env, eval_env=env_id, ref_min_score=ref_min,
        ref_max_score=ref_max, overwrite=overwrite, algorithm_name=f"D4RL {task}",
        code_permalink="cdp_jax/data/d4rl.py",
        description=(
            f"D4RL {task} imported from {Path(path).name} by cdp_jax: {len(episodes)} episodes "
            "split on terminals / timeouts. ref_min_score / ref_max_score are D4RL's published "
            f"random / expert returns for {family} ({ref_min} / {ref_max}, d4rl/infos.py), so "
            "normalised scores match the literature. "
            + (f"Evaluation env {env_id} (gymnasium MuJoCo v5; D4RL used mujoco-py v3: same "
               "observations and actions, returns close but not identical)."
               if env_id else "No gymnasium env has this task's observation layout: spaces only.")
        ),
    )
    env.close()
    if env_id is None:  # Minari records reference scores only with an eval env: add them here
        from minari.dataset.minari_storage import MinariStorage

        MinariStorage.read(out / "data").update_metadata(
            {"ref_min_score": ref_min, "ref_max_score": ref_max})
    return {"dataset_id": dataset_id, "path": str(out), "task": task,
            "num_steps": int(sum(len(ep["rewards"]) for ep in episodes)),
            "num_episodes": len(episodes),
            "num_terminated": int(sum(ep["terminations"][-1] for ep in episodes)),
            "size_bytes": directory_size(out), "ref_min_score": ref_min, "ref_max_score": ref_max,
            "env_id": env_id, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu}
