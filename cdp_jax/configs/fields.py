"""Config fields, without JAX: validation helpers, ``"field=value"`` overrides, JSON round trips.

Every config dataclass (:mod:`cdp_jax.configs`) validates with these, and the command lines parse
their flags with them, so a bad value is refused before JAX is imported.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing


def check_choice(field: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {field}={value!r}; expected one of {list(choices)}.")


def check_positive(field: str, value, *, allow_zero: bool = False) -> None:
    # written as "not (ok)" so that NaN, for which every comparison is False, is rejected
    if value is None or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Invalid {field}={value!r}; must be {bound}.")


def check_optimiser_fields(config) -> None:
    """``max_grad_norm`` None or > 0 (a negative clip would flip the gradient's sign),
    ``lr_decay_steps`` None or >= 0, ``ema_decay`` (where the config has one) in [0, 1]."""
    if getattr(config, "max_grad_norm", None) is not None:
        check_positive("max_grad_norm", config.max_grad_norm)
    if getattr(config, "lr_decay_steps", None) is not None:
        check_positive("lr_decay_steps", config.lr_decay_steps, allow_zero=True)
    decay = getattr(config, "ema_decay", None)
    if decay is not None and not 0.0 <= decay <= 1.0:
        raise ValueError(f"Invalid ema_decay={decay!r}; must lie in [0, 1].")


def check_finite_fields(config, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the first float field of ``config`` (a config dataclass; nested
    configs and tuples included) that is NaN or infinite.

    One check for every config: a NaN learning rate or reward scale would otherwise pass the
    range checks (every comparison with NaN is False) and only show up as a diverged loss.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            check_finite_fields(value, prefix=f"{name}.")
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"Invalid {name}={value!r}; must be a finite number.")


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
            args = tuple(a for a in typing.get_args(hint) if a is not type(None))
            hint = args[0] if len(args) == 1 else typing.Union[args]  # noqa: UP007
        out[name] = hint
    return out


def parse_field_value(cls, name: str, text: str):
    """Parse ``text`` as the value of field ``name`` of config class ``cls``; ``none`` is None
    only where the field's type allows None (elsewhere a string field keeps the text ``"none"``)."""
    types_ = field_types(cls)
    if name not in types_:
        raise ValueError(f"Unknown {cls.__name__} field {name!r}; accepted: {sorted(types_)}.")
    kind = types_[name]
    if text.lower() == "none" and type(None) in typing.get_args(typing.get_type_hints(cls)[name]):
        return None
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"Invalid {name}={text!r}; expected true or false.")
        return text.lower() in ("true", "1")
    if kind in (int, float, str):
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"Invalid {name}={text!r}; expected a {kind.__name__}.") from None
        return _finite(name, value)
    if typing.get_origin(kind) is tuple:  # e.g. hidden_dims=512,512 or (512, 512)
        item = typing.get_args(kind)[0]
        parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
        try:
            return tuple(_finite(name, item(p)) for p in parts)
        except ValueError:
            raise ValueError(f"Invalid {name}={text!r}; expected {item.__name__}s separated by "
                             "commas, e.g. 512,512.") from None
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        for option in typing.get_args(kind):  # e.g. int | float: the first that parses
            try:
                value = option(text)
            except (TypeError, ValueError):
                continue
            return _finite(name, value)
    raise ValueError(f"Cannot parse {name}={text!r} as {kind}.")


def _finite(name: str, value):
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Invalid {name}={value!r}; must be a finite number.")
    return value


def apply_overrides(config, assignments):
    """``config`` with ``"field=value"`` / ``"nested.field=value"`` assignments applied.

    Example: ``apply_overrides(cfg, ["eta=2.0", "contraction.weight=0.1"])``. Unknown fields and
    unparsable values raise ``ValueError`` naming the field.
    """
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"Override {assignment!r} must look like field=value.")
        path, text = assignment.split("=", 1)
        config = _replace_path(config, path.strip().split("."), text.strip())
    return config


def _replace_path(config, path, text):
    name = path[0]
    if len(path) == 1:
        return dataclasses.replace(config, **{name: parse_field_value(type(config), name, text)})
    if not hasattr(config, name) or not dataclasses.is_dataclass(getattr(config, name)):
        raise ValueError(f"{type(config).__name__} has no nested config {name!r}.")
    return dataclasses.replace(config, **{name: _replace_path(getattr(config, name), path[1:],
                                                              text)})


# argparse types for the scripts' own flags (a bad value: argparse's one-line error, exit 2).


def _argparse_number(kind, test, what: str):
    import argparse  # noqa: PLC0415 (only the command lines need it)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _argparse_number(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _argparse_number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _argparse_number(float, lambda v: v > 0, "a finite number > 0")
finite_float = _argparse_number(float, lambda v: True, "a finite number")
nonnegative_float = _argparse_number(float, lambda v: v >= 0, "a finite number >= 0")
