"""Strict numerics for every test: no silent rank promotion (a ``(B,)`` time vector must not
broadcast against ``(B, d)`` actions by accident)."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# The scripts the tests run in subprocesses (experiments/*.py, python -c ...) import this
# checkout's cdp_jax, not whichever copy is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture
def x64():
    """Run a test body in float64 (for references), restoring the previous setting after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A private Minari datasets root (``MINARI_DATASETS_PATH``) for a whole test module; nothing
    touches ``~/.minari``."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root
