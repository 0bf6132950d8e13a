"""Every string option of ``experiments/train.py`` takes each of its documented values from the
command line, as the string it is: the flags of ``TrainConfig`` and the agents' fields reached with
``--set``. ``none`` is a value like any other (``--reward-normalization none``); it means None
only for a field whose type allows None. Only the configs are built: nothing is trained."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from cdp_jax import contraction, diffusion, evaluation, flow, networks, samplers, schedules
from cdp_jax.agents import CONFIGS, common, dbc, dql
from cdp_jax.configs import flow_bc as flow_bc_config
from cdp_jax.configs import fql as fql_config
from cdp_jax.data import normalization, protocol

ROOT = Path(__file__).resolve().parents[1]

# TrainConfig's string fields with a fixed set of values, and those that take any text.
TRAIN_CHOICES = {
    "agent": tuple(CONFIGS),
    "fraction_unit": protocol.FRACTION_UNITS,
    "eval_vector": evaluation.VECTOR_MODES,
    "obs_normalizer": normalization.NORMALIZER_KINDS,
    "reward_normalization": protocol.REWARD_NORMALIZATIONS,
}
TRAIN_TEXT = ("name", "dataset", "run_dir")
# The agents' string fields (``--set FIELD=VALUE``) and their values; per agent where they differ.
AGENT_CHOICES = {
    "time_embedding": tuple(networks.TIME_EMBEDDINGS),
    "param_init": networks.INITS,
    "schedule": tuple(common.SCHEDULES),
    "schedule_discretization": schedules.DISCRETIZATIONS,
    "sampler_spacing": schedules.SPACINGS,
    "prediction": diffusion.PREDICTIONS,
    "sampler": tuple(samplers.SAMPLERS),
    "activation": tuple(networks.ACTIVATIONS),
    "edp_draw": dql.EDP_DRAWS,
    "td_target_order": dql.TD_TARGET_ORDERS,
    "ema_warmup": dql.EMA_WARMUPS,
    "contraction.penalty": tuple(contraction.PENALTIES),
    "contraction.target": tuple(contraction.TARGETS),
    "contraction.frobenius_scale": tuple(contraction.FROBENIUS_SCALES),
    "contraction.frobenius_estimator": contraction.FROBENIUS_ESTIMATORS,
}
# The flow agents' fields whose values differ from the diffusion agents'.
FLOW_CHOICES = {"contraction.target": tuple(flow.TARGETS), "sampler": tuple(flow.FLOW_SAMPLERS),
                "q_agg": fql_config.Q_AGGREGATIONS}
AGENT_SPECIFIC = {"fql": FLOW_CHOICES, "flow_bc": FLOW_CHOICES}
ACTOR_NETWORKS = {"dql": ("mlp", "lnresnet"), "dbc": dbc.ACTOR_NETWORKS,
                  "idql": tuple(networks.ACTORS), "fql": (),
                  "flow_bc": flow_bc_config.ACTOR_NETWORKS}


def _choices(agent: str) -> dict:
    return {**AGENT_CHOICES, **AGENT_SPECIFIC.get(agent, {})}


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("_train_options", ROOT / "experiments" /
                                                  "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configs(train, *argv):
    return train.make_configs(train.parse_args(list(argv)))


def _string_fields(cls, prefix=""):
    for name, kind in common.field_types(cls).items():
        if dataclasses.is_dataclass(kind):
            yield from _string_fields(kind, f"{prefix}{name}.")
        elif kind is str:
            yield prefix + name


def test_the_tables_cover_every_string_field():
    """A new string field needs its values here (or its place among the free-text ones)."""
    from cdp_jax import run_config

    assert set(_string_fields(run_config.TrainConfig)) == set(TRAIN_CHOICES) | set(TRAIN_TEXT)
    for agent, cls in CONFIGS.items():
        fields = set(_string_fields(cls)) - {"actor_network"}
        assert fields <= set(_choices(agent)), (agent, fields - set(_choices(agent)))


@pytest.mark.parametrize("field", sorted(TRAIN_CHOICES))
def test_train_flags_take_every_documented_value(train, field):
    flag = "--" + field.replace("_", "-")
    for value in TRAIN_CHOICES[field]:
        config, _ = _configs(train, flag, value)
        assert getattr(config, field) == value, (flag, value)


def test_none_is_text_unless_the_field_allows_none(train):
    config, _ = _configs(train, "--reward-normalization", "none", "--name", "none",
                         "--dataset", "None", "--run-dir", "none", "--fraction", "none")
    assert config.reward_normalization == "none" and config.name == "none"
    assert config.dataset == "None" and config.run_dir is None and config.fraction is None
    with pytest.raises(ValueError, match=r"Invalid steps='none'; expected a int"):
        _configs(train, "--steps", "none")
    _, agent_config = _configs(train, "--set", "max_grad_norm=none")
    assert agent_config.max_grad_norm is None


@pytest.mark.parametrize("agent", sorted(CONFIGS))
def test_set_takes_every_documented_value_of_the_agents_string_fields(train, agent):
    fields = {**{f: _choices(agent)[f] for f in _string_fields(CONFIGS[agent])
                 if f != "actor_network"}, "actor_network": ACTOR_NETWORKS[agent]}
    for field, values in fields.items():
        for value in values:
            _, agent_config = _configs(train, "--agent", agent, "--set", f"{field}={value}")
            target = agent_config
            for part in field.split(".")[:-1]:
                target = getattr(target, part)
            assert getattr(target, field.split(".")[-1]) == value, (agent, field, value)
