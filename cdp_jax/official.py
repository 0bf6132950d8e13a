"""Parameters of the official CDP code (PyTorch, CleanDiffuser modules) as cdp_jax Flax trees.

The official code's networks are CleanDiffuser's ``DQLMlp`` (offline-RL actor), ``DQLCritic``
(twin critic) and ``PearceMlp`` + ``PearceObsCondition`` (imitation-learning actor). Given their
``state_dict`` as a mapping ``name -> numpy array`` (e.g. ``{k: v.numpy() for k, v in
module.state_dict().items()}``; torch is not needed here), these functions return the parameter
trees of :class:`cdp_jax.networks.DQLActor`, :class:`~cdp_jax.networks.DoubleCritic` and
:class:`~cdp_jax.networks.PearceActor` that compute the same functions (with the matching
``time_embedding="positional_integer_t"`` and ``layer_norm_eps=1e-5`` settings of the ``paper``
presets). Linear weights ``(out, in)`` become kernels ``(in, out)``; LayerNorm / GroupNorm
``weight`` becomes ``scale``. Names may carry the ``diffusion.`` / ``condition.`` prefixes of the
official ``actor.model`` ModuleDict or not. The mappings are traceable (values may be jax arrays),
so gradients w.r.t. the official parameters come from ``jax.grad`` of a composition.

The parity tests (tests/test_parity.py) check every mapping against the official code's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp


def _strip(state: Mapping, prefix: str) -> dict:
    """``state`` with ``prefix`` removed from names that carry it (others kept as they are)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


# Each model: ours (a path of flax module names) -> (official module name, kind), kind "linear"
# (weight (out, in) -> kernel (in, out), bias) or "norm" (weight -> scale, bias).
_DQLMLP = {("Dense_0",): ("diffusion.time_mlp.0", "linear"),
           ("Dense_1",): ("diffusion.time_mlp.2", "linear"),
           ("Dense_2",): ("diffusion.mid_layer.0", "linear"),
           ("Dense_3",): ("diffusion.mid_layer.2", "linear"),
           ("Dense_4",): ("diffusion.mid_layer.4", "linear"),
           ("Dense_5",): ("diffusion.final_layer", "linear")}
_PEARCE = {("act_in",): ("diffusion.act_emb.0", "linear"),
           ("act_out",): ("diffusion.act_emb.2", "linear"),
           ("obs_in",): ("condition.mlp.0", "linear"),
           ("obs_out",): ("condition.mlp.2", "linear"),
           **{(f"fc{i + 1}",): (f"diffusion.fcs.{i}.model.0", "linear") for i in range(3)},
           **{(f"fc{i + 1}_norm",): (f"diffusion.fcs.{i}.model.1", "norm") for i in range(3)},
           ("fc_out",): ("diffusion.fcs.3", "linear")}
_CRITIC_HEAD = {**{(f"Dense_{i}",): (f"{idx}", "linear") for i, idx in enumerate((0, 3, 6, 9))},
                **{(f"LayerNorm_{i}",): (f"{idx + 1}", "norm") for i, idx in enumerate((0, 3, 6))}}
_FIELDS = {"linear": (("kernel", "weight"), ("bias", "bias")),
           "norm": (("scale", "weight"), ("bias", "bias"))}


def _to_ours(state: dict, table: dict, what: str) -> dict:
    params, used = {}, set()
    for path, (theirs, kind) in table.items():
        leaf = {}
        for ours_field, their_field in _FIELDS[kind]:
            name = f"{theirs}.{their_field}"
            if name not in state:
                raise KeyError(f"{what}: official state dict has no {name!r}; names present: "
                               f"{sorted(state)}")
            value = state[name]
            leaf[ours_field] = value.T if ours_field == "kernel" else value
            used.add(name)
        params[path[0]] = leaf
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{what}: parameters not mapped: {unused}.")
    return params


def _to_theirs(params: dict, table: dict) -> dict:
    state = {}
    for path, (theirs, kind) in table.items():
        for ours_field, their_field in _FIELDS[kind]:
            value = params[path[0]][ours_field]
            state[f"{theirs}.{their_field}"] = value.T if ours_field == "kernel" else value
    return state


def _with_prefix(state: Mapping, prefix: str) -> dict:
    return {(k if k.startswith(prefix) else prefix + k): v for k, v in state.items()}


def dqlmlp_params(state: Mapping) -> dict:
    """CleanDiffuser ``DQLMlp`` (time MLP, 3 x 256 Mish, output) -> ``DQLActor`` params."""
    return {"params": _to_ours(_with_prefix(state, "diffusion."), _DQLMLP, "DQLMlp")}


def dqlmlp_state(params: dict) -> dict:
    """Inverse of :func:`dqlmlp_params`: official names (``diffusion.*``) -> arrays."""
    return _to_theirs(params["params"], _DQLMLP)


def dql_critic_params(state: Mapping) -> dict:
    """CleanDiffuser ``DQLCritic`` (``q1_model``, ``q2_model``) -> ``DoubleCritic`` params
    (heads stacked on a leading axis of 2)."""
    state = dict(state)
    heads = []
    for q in ("q1_model", "q2_model"):
        mine = {k[len(q) + 1:]: v for k, v in state.items() if k.startswith(q + ".")}
        heads.append(_to_ours(mine, _CRITIC_HEAD, f"DQLCritic {q}"))
    other = sorted(k for k in state if not k.startswith(("q1_model.", "q2_model.")))
    if other:
        raise ValueError(f"DQLCritic: parameters not mapped: {other}.")
    return {"params": {"VmapQHead_0": _stack(heads)}}


def dql_critic_state(params: dict) -> dict:
    """Inverse of :func:`dql_critic_params`."""
    heads = params["params"]["VmapQHead_0"]
    state = {}
    for i, q in enumerate(("q1_model", "q2_model")):
        head = _index(heads, i)
        state.update({f"{q}.{k}": v for k, v in _to_theirs(head, _CRITIC_HEAD).items()})
    return state


def _stack(trees: list) -> dict:
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return jnp.stack(trees)


def _index(tree, i):
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return tree[i]


def pearce_params(state: Mapping) -> dict:
    """CleanDiffuser ``PearceMlp`` (names ``diffusion.*``) + ``PearceObsCondition``
    (``condition.*``) -> ``PearceActor`` params."""
    return {"params": _to_ours(dict(state), _PEARCE, "PearceMlp + PearceObsCondition")}


def pearce_state(params: dict) -> dict:
    """Inverse of :func:`pearce_params`."""
    return _to_theirs(params["params"], _PEARCE)
