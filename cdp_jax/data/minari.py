"""Load any Minari dataset id into an :class:`OfflineDataset` of float32 arrays.

Works for local ids (built by ``experiments/make_dataset.py``, e.g. ``cdp/pointmaze/umaze-v0``) and
remote ids once downloaded (``minari download D4RL/pointmaze/umaze-v2``). Dict observations are
flattened in a recorded key order (:func:`cdp_jax.data.dataset.default_obs_keys` unless given), and
the same order flattens a (vector) environment's observations at evaluation time through
:func:`flatten_observation`.

A missing dataset raises :class:`DatasetNotFoundError` saying whether the id exists on Minari's
server at all (:mod:`cdp_jax.data.dataset_ids`) and the command that downloads or builds it, or, for
an id that is neither, the nearest ids that exist (built here, on the server, or buildable) and how
to get each. A damaged one raises :class:`DatasetCorruptError` naming the damaged file as it is on
disk (``data/metadata.json``, ``data/main_data.hdf5``, the ``data/`` folder itself), what is wrong
with it (missing, not JSON, a key missing, truncated, not HDF5, an episode or array missing or cut)
and the command that rebuilds or downloads it again; neither surfaces an h5py traceback. A readable
one holding NaN / inf values raises :class:`DatasetValueError` naming the array, the episode and the
step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Sequence

import numpy as np

from cdp_jax import files
from cdp_jax.data import dataset_ids
from cdp_jax.data.dataset import (
    DatasetCorruptError,
    DatasetNotFoundError,
    DatasetValueError,
    ObservationKeyError,
    OfflineDataset,
    concat_episodes,
    default_obs_keys,
    flatten_observation,
    leaf_keys,
    select_episodes,
    windows,
)
from cdp_jax.data.normalization import Normalizer, fit_normalizers

__all__ = [
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DatasetValueError",
    "Normalizer",
    "ObservationKeyError",
    "OfflineDataset",
    "dataset_path",
    "fit_normalizers",
    "flatten_observation",
    "load",
    "make_env",
    "normalized_score",
    "windows",
]

def dataset_path(dataset_id: str):
    """Where Minari keeps ``dataset_id`` (``$MINARI_DATASETS_PATH/<id>``, default
    ``~/.minari/datasets``)."""
    from minari.storage import get_dataset_path

    return get_dataset_path(dataset_id)


def _not_found_message(dataset_id: str) -> str:
    where = (
        f"Minari dataset {dataset_id!r} not found at {dataset_path(dataset_id)} "
        f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '<unset>')})."
    )
    how = dataset_ids.how_to_get(dataset_id, dataset_ids.local_ids(dataset_path("")))
    if dataset_ids.remote_family(dataset_id) is not None:
        how += ("\n  or train on a dataset built here instead: "
                "`python experiments/make_dataset.py --help`.")
    return f"{where}\n{how}"


def _open(dataset_id: str):
    """``minari.MinariDataset`` for an id, with our errors instead of Minari's / h5py's."""
    import minari

    if not isinstance(dataset_id, str) or not dataset_id:
        raise ValueError(f"dataset_id must be a non-empty string, got {dataset_id!r}")
    folder = dataset_path(dataset_id)
    if not os.path.isdir(folder / "data"):
        # A dataset's folder without its data/ (deleted, half copied) is damaged, not missing: a
        # build refuses to write over it without --overwrite. A namespace folder is not one.
        if (not folder.exists() or not dataset_ids.well_formed(dataset_id)
                or dataset_ids.local_ids(folder)):
            raise DatasetNotFoundError(_not_found_message(dataset_id))
        raise _damaged(dataset_id, FileNotFoundError(f"no data/ folder in {folder}"))
    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(_not_found_message(dataset_id)) from e
    except Exception as e:
        if (damaged := _damaged(dataset_id, e)) is None:
            raise
        raise damaged from e


# Read by every Minari storage before any data (MinariStorage.read, MinariDataset.__init__).
_METADATA_KEYS = ("dataset_id", "data_format", "minari_version", "total_episodes", "total_steps")


class _EpisodeShapeError(ValueError):
    """An episode's arrays disagree in length (an array cut short or replaced)."""


def _damaged(dataset_id: str, error: Exception, episode: int | None = None):
    """The :class:`DatasetCorruptError` for ``error``, raised reading ``dataset_id`` (``episode``:
    the episode being read, if any), naming the damaged file and the command that rebuilds it; None
    when the files look sound and ``error`` is not a reading error (a bug to show as it is)."""
    folder = dataset_path(dataset_id)
    if cause := files.disk_cause(error):  # readable once the file system allows: keep the data
        return DatasetCorruptError(
            f"Minari dataset {dataset_id!r} at {folder} cannot be read: {cause}, then run the "
            "command again (the dataset itself is not touched).", path=folder)
    found = _find_damage(folder / "data", error, episode)
    if found is None:
        if not isinstance(error, (OSError, KeyError, ValueError, AssertionError)):
            return None
        found = (folder / "data", f"cannot be read ({_error_text(error)})")
    path, what = found
    shown = path.relative_to(folder).as_posix() + ("/" if path.name == "data" else "")
    return DatasetCorruptError(
        f"Minari dataset {dataset_id!r} at {folder} is damaged: {shown} {what}.\n"
        f"  {dataset_ids.how_to_rebuild(dataset_id)}", path=path)


def _error_text(error: Exception) -> str:
    text = " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args
                        else error).split())
    return f"{type(error).__name__}: {text[:300]}"


def _find_damage(data, error: Exception, episode: int | None):
    """``(file, what is wrong)`` for the first damaged file under a dataset's ``data/`` folder, or
    None when none is found."""
    if not data.is_dir():
        return data, "is missing" if not data.exists() else "is not a folder"
    metadata_file = data / "metadata.json"
    metadata, problem = _read_metadata(metadata_file)
    if problem:
        return metadata_file, problem
    if metadata["data_format"] != "hdf5":  # Minari's arrow storage: no finer diagnosis here
        return None
    main = data / "main_data.hdf5"
    if not main.is_file():
        return main, "is missing"
    text = " ".join(str(error).split())
    if m := re.search(r"truncated file: eof = (\d+).*?stored_eof = (\d+)", text):
        return main, f"is truncated ({int(m[1]):,} of {int(m[2]):,} bytes)"
    if "file signature not found" in text:
        return main, "is empty" if main.stat().st_size == 0 else "is not an HDF5 file"
    if m := re.search(r"object '([^']+)' doesn't exist", text):
        if m[1].startswith("episode_"):
            return main, f"lacks the episode {m[1]!r} (h5py: object {m[1]!r} doesn't exist)"
        return main, (f"lacks the key {m[1]!r} in " + (f"episode_{episode}" if episode is not None
                                                       else "an episode")
                      + f" (h5py: object {m[1]!r} doesn't exist)")
    if isinstance(error, _EpisodeShapeError):
        return main, f"has a damaged episode_{episode}: {error}"
    if episode is not None and isinstance(error, (OSError, KeyError, ValueError, AssertionError)):
        return main, f"has a damaged episode_{episode} ({_error_text(error)})"
    if isinstance(error, OSError):
        return main, f"cannot be read ({_error_text(error)})"
    return None


def _read_metadata(path) -> tuple[dict | None, str | None]:
    """``(metadata, None)`` when Minari can read ``data/metadata.json``, else ``(None, what is
    wrong)``."""
    if not path.is_file():
        return None, "is missing" if not path.exists() else "is not a file"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "is not text (binary garbage)"
    except OSError as e:
        return None, f"cannot be read ({_error_text(e)})"
    if not text.strip():
        return None, "is empty"
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"is not JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    if not isinstance(metadata, dict):
        return None, f"is not a JSON object (it holds a {type(metadata).__name__})"
    missing = [k for k in _METADATA_KEYS if k not in metadata]
    if "env_spec" not in metadata and not {"observation_space", "action_space"} <= set(metadata):
        missing.append("observation_space and action_space (or env_spec)")
    if missing:
        return None, f"lacks the key(s) {', '.join(missing)}"
    if metadata["data_format"] not in ("hdf5", "arrow"):
        return None, (f"names an unknown data_format {metadata['data_format']!r} (Minari reads "
                      "'hdf5' and 'arrow')")
    from minari import __version__, supported_dataset_versions

    if metadata["minari_version"] not in supported_dataset_versions:
        return None, (f"records Minari {metadata['minari_version']!r}, which the installed Minari "
                      f"{__version__} does not read (it reads {sorted(supported_dataset_versions)})")
    return metadata, None


def _check_lengths(ep: dict) -> None:
    """Raise :class:`_EpisodeShapeError` when an episode's arrays disagree in length (Minari reads
    each array whole and checks none): ``T`` steps, ``T + 1`` observations."""
    def leaves(name, x):  # Minari decodes Dict spaces as dicts, Tuple spaces as tuples
        if isinstance(x, dict | tuple):
            items = x.items() if isinstance(x, dict) else enumerate(x)
            return [leaf for k, v in items for leaf in leaves(f"{name}/{k}", v)]
        return [(name, len(x))]

    steps = len(ep["rewards"])
    lengths = [*leaves("actions", ep["actions"]), ("rewards", steps),
               ("terminations", len(ep["terminations"])), ("truncations", len(ep["truncations"]))]
    observations = leaves("observations", ep["observations"])
    if any(n != steps for _, n in lengths) or any(n != steps + 1 for _, n in observations):
        shown = ", ".join(f"{name} {n}" for name, n in [*observations, *lengths])
        raise _EpisodeShapeError(f"arrays of unequal length ({shown}; observations hold one row "
                                 "more than the others)")


def load(
    dataset_id: str,
    *,
    fraction: float | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
    obs_keys: Sequence[str] | None = None,
) -> OfflineDataset:
    """Load a Minari dataset as transitions of whole episodes.

    Args:
        dataset_id: any Minari id present under ``MINARI_DATASETS_PATH``.
        fraction: keep this fraction of the episodes, in ``(0, 1]``; whole episodes, drawn by
            ``seed``.
        num_episodes: keep this many whole episodes instead (at most one of the two).
        seed: which episodes a fraction / count keeps (same seed, same episodes).
        obs_keys: flattening order for dict observations (``/`` joins nested keys); None uses
            :func:`cdp_jax.data.dataset.default_obs_keys` (``observation`` then ``desired_goal``
            for goal-conditioned envs). Ignored (must be None or empty) for Box observations.

    Returns:
        An :class:`OfflineDataset`; ``episode_ids`` are Minari's episode ids. Discrete actions
        become ``(N, 1)`` float indices.

    Raises:
        DatasetNotFoundError: the id is not downloaded / built (the message says how to get it, or
            names the nearest ids that exist).
        DatasetCorruptError: the files exist but cannot be read (the message and ``path`` name
            the damaged file; the message gives the command that rebuilds the dataset).
        DatasetValueError (a ValueError): an array read holds NaN / inf; the message names the
            array, the episode and the step.
        ValueError: bad ``fraction`` / ``num_episodes``.
        ObservationKeyError (a KeyError): an ``obs_keys`` entry is not in the observations.
    """
    ds = _open(dataset_id)
    all_ids = np.asarray(ds.episode_indices)
    keep = all_ids[select_episodes(all_ids.size, fraction=fraction, num_episodes=num_episodes,
                                   seed=seed)]
    episodes, keys = [], None
    try:
        for ep in ds.storage.get_episodes(keep):
            _check_lengths(ep)
            if keys is None:
                keys = _resolve_obs_keys(ep["observations"], obs_keys)
            episodes.append({
                "obs": flatten_observation(ep["observations"], keys).reshape(
                    len(ep["rewards"]) + 1, -1),
                "actions": ep["actions"],
                "rewards": ep["rewards"],
                "terminals": ep["terminations"],
                "timeouts": ep["truncations"],
                "id": ep["id"],
            })
    except ObservationKeyError:
        raise
    except Exception as e:
        episode = int(keep[len(episodes)]) if len(episodes) < len(keep) else None
        if (damaged := _damaged(dataset_id, e, episode)) is None:
            raise
        raise damaged from e
    metadata = ds.storage.metadata
    return concat_episodes(
        episodes,
        dataset_id=dataset_id,
        obs_keys=tuple(keys),
        ref_min_score=_maybe_float(metadata.get("ref_min_score")),
        ref_max_score=_maybe_float(metadata.get("ref_max_score")),
        eval_env_spec=metadata.get("eval_env_spec") or metadata.get("env_spec"),
    )


def _resolve_obs_keys(obs, obs_keys: Sequence[str] | None) -> tuple[str, ...]:
    if obs_keys is None:
        return default_obs_keys(obs)
    obs_keys = tuple(obs_keys)
    if not isinstance(obs, dict):
        if obs_keys:
            raise ObservationKeyError(
                f"observation key {obs_keys[0]!r} not found: this dataset has Box observations "
                "(pass obs_keys=None)"
            )
        return ()
    missing = [k for k in obs_keys if k not in leaf_keys(obs) and not any(
        leaf.startswith(k + "/") for leaf in leaf_keys(obs))]
    if missing:
        raise ObservationKeyError(
            f"observation key {missing[0]!r} not found; available keys: {leaf_keys(obs)}"
        )
    # A key naming a sub-dict stands for all its leaves, in the dict's order.
    return tuple(leaf for k in obs_keys for leaf in leaf_keys(obs)
                 if leaf == k or leaf.startswith(k + "/"))


def _maybe_float(x) -> float | None:
    return None if x is None else float(x)


def normalized_score(dataset: OfflineDataset, returns) -> np.ndarray:
    """D4RL normalised score ``100 * (R - ref_min) / (ref_max - ref_min)`` of episode returns ``R``.

    Note Minari's ``get_normalized_score`` returns the same without the factor 100.
    """
    if dataset.ref_min_score is None or dataset.ref_max_score is None:
        raise ValueError(
            f"dataset {dataset.dataset_id!r} records no ref_min_score / ref_max_score, so it "
            "has no normalised score"
        )
    returns = np.asarray(returns, dtype=np.float64)
    lo, hi = dataset.ref_min_score, dataset.ref_max_score
    return 100.0 * (returns - lo) / (hi - lo)


def make_env(dataset: OfflineDataset, eval_env: bool = True, num_envs: int | None = None, **kwargs):
    """The environment recorded with the dataset (the evaluation env by default).

    Args:
        dataset: a loaded :class:`OfflineDataset`.
        eval_env: the evaluation env (``eval_env_spec``) if True, else the collection env.
        num_envs: if given, a ``gymnasium`` vector env (``gym.make_vec``, sync) of that many copies;
            flatten its dict observations with ``flatten_observation(obs, dataset.obs_keys)``.
        **kwargs: overrides passed to ``gym.make`` / ``gym.make_vec``.
    """
    import gymnasium as gym

    _register_robotics()
    if eval_env and dataset.eval_env_spec is not None:
        spec = gym.envs.registration.EnvSpec.from_json(dataset.eval_env_spec)
    elif "env_args" in dataset.extras:
        raise ValueError(
            f"dataset {dataset.dataset_id!r} is a robomimic file: its environment is a robosuite "
            "env (see dataset.extras['env_args']), which gymnasium cannot make"
        )
    else:
        ds = _open(dataset.dataset_id)
        spec = ds.env_spec
        if spec is None:
            raise ValueError(f"dataset {dataset.dataset_id!r} records no environment spec")
    if num_envs is None:
        return gym.make(spec, **kwargs)
    return gym.make_vec(spec, num_envs=num_envs, vectorization_mode="sync", **kwargs)


# gymnasium-robotics 1.2.1-1.4.2 print this notice (from farama_notifications) to stderr when first
# imported; nothing here uses the Adroit hand envs, and the notice lands inside the dataset build's
# progress bar. Only lines holding it are dropped; anything else printed during the import is kept.
ADROIT_NOTICE = "AdroitHandRelocateDense-v1, AdroitHandHammerDense-v1, AdroitHandDoorDense-v1"


def _register_robotics() -> None:
    """Register gymnasium-robotics envs (PointMaze, AntMaze, Kitchen, Fetch, ...) when it is
    installed, without its Adroit notice (see ``ADROIT_NOTICE``). Call it before the first
    ``gym.make`` of such an env: that import would print the notice."""
    try:
        import gymnasium as gym
    except ImportError:
        return
    if "gymnasium_robotics" not in sys.modules:
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):
                import gymnasium_robotics  # noqa: F401
        except ImportError:
            return
        finally:
            sys.stderr.write("".join(line for line in printed.getvalue().splitlines(True)
                                     if ADROIT_NOTICE not in line))
    gym.register_envs(sys.modules["gymnasium_robotics"])
