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
The training record (``transitions.h5``), and so ``medium-replay``, is not part of it.
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
    """Write ``params`` (a nested dict of arrays) as an ``.npz`` at ``path``; return its sha256.

    Members are stored uncompressed in sorted order with a fixed timestamp, so equal parameters
    give equal bytes (``np.savez`` stamps the current time).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in sorted(flatten_params(params).items()):
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
