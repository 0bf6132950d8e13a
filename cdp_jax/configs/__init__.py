"""Every configuration, importable without JAX.

A command line builds its configs from these classes and validates them (unknown fields, ranges,
names, non-finite numbers) before it imports JAX, so a mistyped flag costs a fraction of a second.
The algorithms import their config from here and re-export it (``cdp_jax.agents.dql.DQLConfig`` is
:class:`cdp_jax.configs.dql.DQLConfig`).

* :mod:`~cdp_jax.configs.names`: the names each field may take (samplers, networks, ...);
* :mod:`~cdp_jax.configs.fields`: validation helpers, ``field=value`` overrides, JSON round trips;
* :mod:`~cdp_jax.configs.contraction`: :class:`ContractionConfig`;
* one module per agent (``dql``, ``dbc``, ``idql``, ``fql``, ``flow_bc``) with its config class;
* :mod:`~cdp_jax.configs.train`: :class:`TrainConfig`, the presets and :func:`preset`.

``CONFIGS[name]`` is an agent's config class and ``DATA[name]`` the batch layout it trains on
(``"transitions"`` or ``"windows"``).
"""

from cdp_jax.configs.dbc import DBCConfig
from cdp_jax.configs.dql import DQLConfig
from cdp_jax.configs.flow_bc import FlowBCConfig
from cdp_jax.configs.fql import FQLConfig
from cdp_jax.configs.idql import IDQLConfig

CONFIGS = {"dql": DQLConfig, "dbc": DBCConfig, "idql": IDQLConfig, "fql": FQLConfig,
           "flow_bc": FlowBCConfig}
DATA = {"dql": "transitions", "dbc": "windows", "idql": "transitions", "fql": "transitions",
        "flow_bc": "windows"}
