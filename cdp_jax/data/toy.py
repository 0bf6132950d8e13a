"""A 2-D multimodal toy for contraction studies: actions conditioned on a 1-D observation.

For an observation ``o`` in ``[-1, 1]`` the action distribution is an equal mixture of
``num_modes`` isotropic Gaussians with standard deviation ``mode_std`` whose centres sit on a circle
of radius ``radius`` rotated by ``o * pi / 2``:

    c_k(o) = radius * (cos(theta_k), sin(theta_k)),  theta_k = 2 pi k / K + pi / K + o pi / 2.

Everything is closed-form, so "on the data support" and "mode coverage" can be measured exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def mode_centres(obs: jax.Array, num_modes: int = 4, radius: float = 0.6) -> jax.Array:
    """Mode centres ``(O, K, 2)`` for observations ``obs`` of shape ``(O,)``."""
    k = jnp.arange(num_modes)
    theta = 2 * math.pi * k[None] / num_modes + math.pi / num_modes + obs[:, None] * math.pi / 2
    return radius * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


def sample_dataset(key: jax.Array, num_samples: int, *, num_modes: int = 4, radius: float = 0.6,
                   mode_std: float = 0.05) -> dict:
    """``{"observations": (N, 1), "actions": (N, 2)}`` with ``o ~ U[-1, 1]`` and a random mode each."""
    key_o, key_k, key_e = jax.random.split(key, 3)
    obs = jax.random.uniform(key_o, (num_samples,), minval=-1.0, maxval=1.0)
    which = jax.random.randint(key_k, (num_samples,), 0, num_modes)
    centres = mode_centres(obs, num_modes, radius)[jnp.arange(num_samples), which]
    actions = centres + mode_std * jax.random.normal(key_e, (num_samples, 2))
    return {"observations": obs[:, None], "actions": actions}


def support_metrics(obs: jax.Array, actions: jax.Array, *, num_modes: int = 4, radius: float = 0.6,
                    mode_std: float = 0.05, tolerance: float = 3.0) -> dict:
    """How well sampled actions ``(O, N, 2)`` for observations ``(O,)`` match the true modes.

    Returns (each a scalar averaged over observations):
      ``on_support``: fraction of actions within ``tolerance * mode_std`` of some mode centre;
      ``distance``: mean distance to the nearest centre;
      ``coverage``: fraction of modes that received at least one on-support action;
      ``mode_balance``: ``1 - TV(empirical mode frequencies, uniform)`` over on-support actions
        (0 for an observation without any).
    """
    centres = mode_centres(obs, num_modes, radius)  # (O, K, 2)
    dist = jnp.linalg.norm(actions[:, :, None, :] - centres[:, None, :, :], axis=-1)  # (O, N, K)
    nearest = jnp.min(dist, axis=-1)
    hit = nearest <= tolerance * mode_std
    which = jnp.argmin(dist, axis=-1)
    counts = jnp.sum(jax.nn.one_hot(which, num_modes) * hit[..., None], axis=1)  # (O, K)
    total = jnp.sum(counts, -1, keepdims=True)
    freq = counts / jnp.maximum(total, 1.0)
    # 0 (not 0.5) for an observation with no on-support action at all.
    balance = jnp.where(total[:, 0] > 0, 1.0 - 0.5 * jnp.sum(jnp.abs(freq - 1.0 / num_modes), -1), 0.0)
    return {
        "on_support": jnp.mean(hit),
        "distance": jnp.mean(nearest),
        "coverage": jnp.mean(jnp.mean(counts > 0, axis=-1)),
        "mode_balance": jnp.mean(balance),
    }
