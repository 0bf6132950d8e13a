"""Strict numerics for every test: no silent rank promotion (a ``(B,)`` time vector must not
broadcast against ``(B, d)`` actions by accident)."""

import os

# Keep CPU tests from fighting over the 2 cores with oversubscribed thread pools.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test body in float64 (for references), restoring the previous setting after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
