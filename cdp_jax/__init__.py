"""cdp_jax: Contractive Diffusion Policies in JAX.

Layers, lowest first: ``configs`` (every config and preset, no JAX) -> ``schedules`` ->
``diffusion`` -> ``samplers``; ``estimators`` -> ``penalties`` -> ``contraction`` (diffusion's
penalty targets) and ``flow`` (flow matching and its penalty targets) -> ``networks`` /
``flow_networks`` -> ``agents`` -> ``training`` / ``evaluation``. Import the submodule you need,
e.g. ``from cdp_jax import samplers, schedules``.
"""

__version__ = "0.1.0"
