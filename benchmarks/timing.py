"""Timing helpers shared by the benchmark scripts (imported as ``timing`` when a script runs).

Conventions: compile first, ``jax.block_until_ready`` every call, repeat, and let
the caller report median and min; ``time_interleaved`` times several calls round-robin so that all
of them see the same background load on a shared machine.
"""

from __future__ import annotations

import time

import jax


def time_calls(fn, *args, repeats: int) -> tuple[float, list[float]]:
    """``(compile_and_first_call_s, [seconds per call] * repeats)`` for ``fn(*args)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times


def time_interleaved(calls: dict, repeats: int, *, warmup: bool = False) -> dict[str, list[float]]:
    """Seconds per call for each of ``calls`` (``name -> (fn, args)``), timed round-robin;
    ``warmup`` first runs each call once (compilation) untimed."""
    if warmup:
        for fn, args in calls.values():
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return times
