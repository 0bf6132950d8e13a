"""Agents: one algorithm per file, each a frozen config plus pure ``init``, ``update``, ``act``.

* ``dql``: Diffusion-QL / EDP (offline RL on transitions), the algorithm of the official CDP RL
  code (its exact pipeline: ``--preset paper``, :mod:`cdp_jax.paper`).
* ``dbc``: diffusion behaviour cloning with observation history and action chunks (imitation).
* ``idql``: IQL critic + value, diffusion behaviour actor, critic-resampled candidates (offline RL).
* ``fql``: Flow Q-Learning (offline RL with a flow behaviour policy and a one-step policy).
* ``flow_bc``: flow-matching behaviour cloning with observation history and action chunks.

``AGENTS[name]`` is the module; ``CONFIGS[name]`` its config dataclass; ``DATA[name]`` the batch
layout it trains on (``"transitions"`` or ``"windows"``).
"""

from cdp_jax.agents import dbc, dql, flow_bc, fql, idql
from cdp_jax.configs import CONFIGS, DATA  # noqa: F401 (re-exported)

AGENTS = {"dql": dql, "dbc": dbc, "idql": idql, "fql": fql, "flow_bc": flow_bc}


def get_agent(name: str):
    """The agent module for ``name``; unknown names raise listing the valid ones."""
    if name not in AGENTS:
        raise ValueError(f"Unknown agent {name!r}; expected one of {sorted(AGENTS)}.")
    return AGENTS[name]
