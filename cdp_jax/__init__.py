"""cdp_jax: Contractive Diffusion Policies in JAX.

Layers, lowest first: ``schedules`` -> ``diffusion`` -> ``samplers`` / ``contraction`` -> ``networks``
-> ``agents`` -> ``training`` / ``evaluation``. Import the submodule you need, e.g.
``from cdp_jax import samplers, schedules``.
"""

__version__ = "0.1.0"
