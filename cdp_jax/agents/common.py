"""Pieces shared by the agents: config validation, optimisers, EMA, schedules, config <-> JSON."""

from __future__ import annotations

import dataclasses
import types
import typing

import jax
import optax

from cdp_jax import schedules

SCHEDULES = {"cosine": schedules.cosine, "linear": schedules.linear}


def check_choice(field: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {field}={value!r}; expected one of {list(choices)}.")


def check_positive(field: str, value, *, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Invalid {field}={value!r}; must be {bound}.")


def make_schedule(kind: str, num_steps: int) -> schedules.Schedule:
    """A discrete VP schedule by name (``"cosine"`` or ``"linear"``) with ``num_steps`` steps."""
    check_choice("schedule", kind, tuple(SCHEDULES))
    return SCHEDULES[kind](num_steps)


def make_optimizer(lr: float, decay_steps: int | None, weight_decay: float,
                   max_grad_norm: float | None) -> optax.GradientTransformation:
    """Adam (``weight_decay = 0``) or AdamW, cosine-decayed over ``decay_steps`` if given."""
    schedule = lr if not decay_steps else optax.cosine_decay_schedule(lr, decay_steps)
    opt = optax.adamw(schedule, weight_decay=weight_decay) if weight_decay else optax.adam(schedule)
    if max_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


def ema_update(ema, new, decay: float):
    """``decay * ema + (1 - decay) * new`` leaf by leaf."""
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def config_to_dict(config) -> dict:
    """A frozen config dataclass (nested ones included) as a JSON-ready dict."""
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Rebuild a (possibly nested) frozen config dataclass from :func:`config_to_dict` output.

    Unknown keys raise ``ValueError`` naming them and the accepted fields.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} fields {unknown}; accepted: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def field_types(cls) -> dict:
    """``{field: type}`` for a config dataclass, with ``X | None`` unwrapped to ``X``."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[name] = hint
    return out
