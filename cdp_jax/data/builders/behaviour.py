"""Shipped behaviour policies: SAC actor snapshots as plain ``.npz`` files, small enough for git.

A folder of shipped policies (e.g. ``results/behaviour/hopper/``) holds

* ``medium.npz``, ``expert.npz``: the actor's parameters, one array per parameter, keyed by its
  flattened path (``params/Dense_0/kernel``); a zip of ``.npy`` members written with a fixed
  timestamp and no compression, so the same parameters give the same bytes. Read with
  ``np.load(..., allow_pickle=False)``: no pickle anywhere, loading runs no code.
* ``policies.json`` (:data:`MANIFEST`): the env, the network fields of :class:`SACConfig` that
  rebuild the actor (:data:`ACTOR_FIELDS`), the observation and action sizes, and per policy its
  file, env step, evaluation return and the sha256 of the file; the reference scores of the
  datasets; the training run's ``config.json`` for the record.

:func:`write_policies` writes such a folder, :func:`load_actor` reads one policy back into a
:class:`SACState` whose actor acts exactly as the orbax snapshot it came from (same parameters,
same network), checking the file's digest and every parameter's path, shape and dtype first.

A folder may also hold what ``medium-replay`` needs, the SAC run's training record up to the
medium snapshot, in a fraction of its size (:func:`write_record`): ``record.npz`` holds only the
actions the env was stepped with (:func:`pack_actions`: float32, plus the few entries float32
cannot hold exactly, such as the uniform random warm-up actions), and the manifest's ``record``
entry the seeds the envs were reset with and a sha256 per :data:`RECORD_BLOCK` rows of
everything else (:data:`RECORD_KEYS`). MuJoCo is deterministic, so stepping the same envs with
the same seeds and actions regenerates the record bit for bit
(:func:`cdp_jax.data.builders.locomotion.replay_record`), and the digests say where a
replay on another machine stops matching.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cdp_jax import files

MANIFEST = "policies.json"
FORMAT = "cdp_jax behaviour policies, npz v1"
RECORD = "record.npz"
RECORD_KEYS = ("observations", "next_observations", "rewards", "terminations", "truncations")
RECORD_BLOCK = 10_000  # rows of the training record per sha256 in the manifest
ACTOR_FIELDS = ("hidden_dims", "log_std_min", "log_std_max")
POLICIES = ("medium", "expert")


def is_shipped(policy_dir: str | Path) -> bool:
    """Whether ``policy_dir`` is a folder of shipped policies (holds :data:`MANIFEST`)."""
    return (Path(policy_dir) / MANIFEST).exists()


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"params": {"Dense_0": {"kernel": x}}}`` -> ``{"params/Dense_0/kernel": x}`` (numpy)."""
    flat = {}
    for name, value in params.items():
        if "/" in str(name):
            raise ValueError(f"parameter name {name!r} contains '/', the path separator")
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
    """The inverse of :func:`flatten_params`."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def save_params(path: str | Path, params: Mapping) -> str:
    """Write ``params`` (a nested dict of arrays) as an ``.npz`` at ``path``; return its sha256
    (:func:`save_arrays` of the flattened parameters)."""
    return save_arrays(path, flatten_params(params))


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Write named arrays as an ``.npz`` at ``path``; return its sha256.

    Members are stored uncompressed in sorted order with a fixed timestamp, so equal arrays give
    equal bytes (``np.savez`` stamps the current time).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in sorted(arrays.items()):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
    tmp.replace(path)
    return sha256(path)


def load_params(path: str | Path) -> dict:
    """The nested parameter dict of an ``.npz`` written by :func:`save_params` (numpy arrays)."""
    with np.load(path, allow_pickle=False) as data:
        return unflatten_params({name: data[name] for name in data.files})


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_policies(out: str | Path, *, env: str, env_id: str, config, dims: dict,
                   snapshots: dict[str, tuple[Mapping, int, float]], reference_scores: dict,
                   training: dict | None = None) -> dict:
    """Write a shipped-policies folder; return its manifest.

    Args:
        out: the folder (created).
        env, env_id: ``"hopper"``, ``"Hopper-v5"``.
        config: the :class:`SACConfig` the actor was trained with (its :data:`ACTOR_FIELDS` kept).
        dims: ``{"obs_dim": ..., "action_dim": ...}``.
        snapshots: ``{"medium": (actor_params, env_step, eval_return), "expert": ...}``.
        reference_scores: ``ref_min_score``, ``ref_max_score`` and how they were measured.
        training: the training run's ``config.json``, kept for the record.
    """
    unknown = sorted(set(snapshots) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown policies {unknown}; expected a subset of {list(POLICIES)}")
    out = files.make_dir(out)
    policies = {}
    for which, (params, step, eval_return) in snapshots.items():
        digest = save_params(out / f"{which}.npz", params)
        policies[which] = {"file": f"{which}.npz", "env_step": int(step),
                           "eval_return": float(eval_return), "sha256": digest}
    manifest = {"format": FORMAT, "env": env, "env_id": env_id,
                "sac": {k: getattr(config, k) for k in ACTOR_FIELDS},
                "dims": {"obs_dim": int(dims["obs_dim"]), "action_dim": int(dims["action_dim"])},
                "policies": policies, "reference_scores": reference_scores,
                "training": training or {}}
    files.write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(policy_dir: str | Path) -> dict:
    path = Path(policy_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def selection(policy_dir: str | Path) -> dict:
    """``dict(medium_step, medium_return, expert_step, expert_return)`` of a shipped folder."""
    policies = read_manifest(policy_dir)["policies"]
    missing = [w for w in POLICIES if w not in policies]
    if missing:
        raise ValueError(f"{Path(policy_dir) / MANIFEST} has no {' / '.join(missing)} policy")
    return {f"{w}_{k}": policies[w][f] for w in POLICIES
            for k, f in (("step", "env_step"), ("return", "eval_return"))}


def load_actor(policy_dir: str | Path, which: str):
    """A :class:`SACState` holding the shipped ``which`` (``medium`` / ``expert``) actor, and its
    manifest entry. Only the actor is filled; use it with :func:`cdp_jax.agents.sac.act`.

    Raises ``ValueError`` if the file's sha256 differs from the manifest's, or if a parameter's
    path, shape or dtype differs from the network the manifest describes.
    """
    import jax
    import jax.numpy as jnp

    from cdp_jax.agents import sac

    policy_dir = Path(policy_dir)
    manifest = read_manifest(policy_dir)
    if which not in manifest["policies"]:
        raise ValueError(f"no {which!r} policy in {policy_dir / MANIFEST}; it holds "
                         f"{sorted(manifest['policies'])}")
    entry = manifest["policies"][which]
    path = policy_dir / entry["file"]
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 {sha256(path)} differs from the manifest's "
                         f"{entry['sha256']} (a damaged or replaced file)")
    saved = manifest["sac"]
    config = sac.default_config(hidden_dims=tuple(saved["hidden_dims"]),
                                log_std_min=saved["log_std_min"], log_std_max=saved["log_std_max"])
    dims = manifest["dims"]
    state = sac.init(jax.random.PRNGKey(0), config, dims["obs_dim"], dims["action_dim"])
    expected = {k: (v.shape, v.dtype) for k, v in flatten_params(state.actor_params).items()}
    found = flatten_params(load_params(path))
    got = {k: (v.shape, v.dtype) for k, v in found.items()}
    if got != expected:
        wrong = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise ValueError(f"{path}: parameters {wrong} do not match the actor of "
                         f"{manifest['sac']} with dims {dims} (found {[got.get(k) for k in wrong]},"
                         f" expected {[expected.get(k) for k in wrong]})")
    params = unflatten_params({k: jnp.asarray(v) for k, v in found.items()})
    return state.replace(actor_params=params), entry


def load_actor_at_step(policy_dir: str | Path, step: int):
    """:func:`load_actor` of the shipped policy taken at env step ``step``."""
    policies = read_manifest(policy_dir)["policies"]
    for which in POLICIES:
        if which in policies and policies[which]["env_step"] == step:
            return load_actor(policy_dir, which)
    raise ValueError(f"no shipped policy at env step {step} in {Path(policy_dir) / MANIFEST}; "
                     f"it holds {({w: p['env_step'] for w, p in policies.items()})}")


def record_digests(record: Mapping[str, np.ndarray], block: int | None = None) -> list[str]:
    """sha256 of each ``block`` (default :data:`RECORD_BLOCK`) rows of a training record's
    :data:`RECORD_KEYS` arrays (``(rows, num_envs, ...)``, the layout of ``transitions.h5``),
    hashed in that order; the last digest covers the remaining rows."""
    block = block or RECORD_BLOCK
    rows = len(record["rewards"])
    digests = []
    for start in range(0, rows, block):
        h = hashlib.sha256()
        for k in RECORD_KEYS:
            h.update(np.ascontiguousarray(record[k][start:start + block]).tobytes())
        digests.append(h.hexdigest())
    return digests


def pack_actions(actions: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 env actions as ``actions`` (float32) plus ``exact_index`` / ``exact_value``: the
    flat positions and float64 values of the entries float32 does not hold exactly.
    :func:`unpack_actions` inverts it bit for bit."""
    actions = np.asarray(actions, np.float64)
    low = actions.astype(np.float32)
    index = np.flatnonzero(low.astype(np.float64) != actions)
    return {"actions": low, "exact_index": index.astype(np.int64),
            "exact_value": actions.reshape(-1)[index]}


def unpack_actions(packed: Mapping[str, np.ndarray]) -> np.ndarray:
    actions = np.asarray(packed["actions"]).astype(np.float64)
    actions.reshape(-1)[packed["exact_index"]] = packed["exact_value"]
    return actions


def write_record(policy_dir: str | Path, actions: np.ndarray, *, env_steps: int,
                 resets: list[dict], digests: list[str], versions: dict) -> dict:
    """Add a training record to a shipped folder: ``record.npz`` (:func:`pack_actions` of the
    ``(rows, num_envs, action_dim)`` env actions) and the manifest's ``record`` entry, which it
    returns: ``env_steps``, ``rows``, ``num_envs``, ``resets`` (``[{"row", "seeds"}]``: where the
    run reset its envs with explicit seeds, its start and each resume), ``block_rows``,
    ``block_sha256`` (:func:`record_digests`), the simulator ``versions`` and the file's sha256."""
    policy_dir = Path(policy_dir)
    manifest = read_manifest(policy_dir)
    rows, num_envs = actions.shape[:2]
    entry = {"file": RECORD, "env_steps": int(env_steps), "rows": int(rows),
             "num_envs": int(num_envs), "resets": resets, "block_rows": RECORD_BLOCK,
             "block_sha256": list(digests), "versions": versions,
             "sha256": save_arrays(policy_dir / RECORD, pack_actions(actions))}
    files.write_json(policy_dir / MANIFEST, {**manifest, "record": entry})
    return entry


def drop_record(policy_dir: str | Path) -> None:
    """Remove a shipped folder's training record (file and manifest entry), if it has one."""
    policy_dir = Path(policy_dir)
    manifest = read_manifest(policy_dir)
    manifest.pop("record", None)
    files.write_json(policy_dir / MANIFEST, manifest)
    (policy_dir / RECORD).unlink(missing_ok=True)


def load_record_actions(policy_dir: str | Path) -> tuple[np.ndarray, dict]:
    """The env actions of a shipped training record (float64, ``(rows, num_envs, action_dim)``)
    and its manifest entry; ``ValueError`` if the folder has none or the file's sha256 or shape
    differs from the manifest's."""
    policy_dir = Path(policy_dir)
    entry = read_manifest(policy_dir).get("record")
    if entry is None:
        raise ValueError(f"{policy_dir / MANIFEST} has no training record (it was exported "
                         "without one, from a folder that had no transitions.h5)")
    path = policy_dir / entry["file"]
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 {sha256(path)} differs from the manifest's "
                         f"{entry['sha256']} (a damaged or replaced file)")
    with np.load(path, allow_pickle=False) as data:
        actions = unpack_actions({k: data[k] for k in data.files})
    if actions.shape[:2] != (entry["rows"], entry["num_envs"]):
        raise ValueError(f"{path}: actions of shape {actions.shape}, the manifest says "
                         f"{entry['rows']} rows of {entry['num_envs']} envs")
    return actions, entry
