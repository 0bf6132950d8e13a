"""Devices, meshes and shardings for training: one code path for one device, many devices and
many hosts, built on ``jax.sharding`` (no launcher, no parameter server).

Parallel modes (:data:`PARALLEL_MODES`), each a 1-d :class:`jax.sharding.Mesh` over all devices:

* ``"none"``: no mesh; arrays live on the default device.
* ``"data"``: the train state and the dataset are replicated, each batch ``(K, B, ...)`` is split
  along ``B`` (axis ``"batch"``); XLA's partitioner turns the batch means of the losses into
  all-reduces, so the parameters equal the single-device run up to float reassociation.
* ``"seeds"``: the seed axis of a vmapped train state (and of per-seed datasets) is split across
  devices (axis ``"seeds"``); seeds never communicate.

With ``jax.distributed.initialize`` (:func:`setup` with ``distributed=True``) ``jax.devices()`` is
the global device list and the same meshes span every host; arrays are assembled from each
process's (identical) host copy by :func:`put`, and read back by :func:`to_host`.

:func:`check_memory` refuses, before compilation, a batch size whose device-side batches cannot
fit; :func:`out_of_memory` turns the allocator's error into one message naming the fields.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cdp_jax.configs import names

PARALLEL_MODES = names.PARALLEL_MODES


class DeviceMemoryError(MemoryError):
    """A configuration needs more device memory than there is; the message names the fields."""


DEVICE_KINDS = names.DEVICE_KINDS
MESH_AXIS = {"data": "batch", "seeds": "seeds"}


def setup(device: str = "auto", distributed: bool = False) -> str:
    """Initialise multi-host JAX if asked, check the backend, return a one-line description.

    ``device`` other than ``"auto"`` must be JAX's default backend: asking for ``"gpu"`` on a
    machine where JAX only finds the CPU raises instead of silently training on the CPU.
    """
    if device not in DEVICE_KINDS:
        raise ValueError(f"Invalid device={device!r}; expected one of {DEVICE_KINDS}.")
    if distributed:
        # SLURM, Open MPI, TPU pods, Kubernetes are detected by JAX; a manual launch sets
        # JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
        manual = {name: int(os.environ[var]) for name, var in
                  (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
                  if var in os.environ}
        jax.distributed.initialize(**manual)
    backend = jax.default_backend()
    if device != "auto" and backend != device:
        raise RuntimeError(
            f"--device {device} was asked for but JAX's backend is {backend!r} (devices: "
            f"{jax.devices()}); install the matching jaxlib plugin (e.g. `pip install "
            "'jax[cuda12]'`) or pass --device auto to accept the CPU.")
    return (f"JAX backend: {backend}; process {jax.process_index()} of {jax.process_count()}; "
            f"{jax.device_count()} device(s): {jax.devices()}")


def make_mesh(mode: str, devices=None) -> Mesh | None:
    """The 1-d mesh of ``mode`` over ``devices`` (default: all, across hosts); ``None`` for
    ``"none"``."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"Invalid parallel mode {mode!r}; expected one of {PARALLEL_MODES}.")
    if mode == "none":
        return None
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (MESH_AXIS[mode],))


def check_divisible(mesh: Mesh | None, size: int, what: str) -> None:
    """Raise unless ``size`` (the batch or the number of seeds) splits evenly over ``mesh``."""
    if mesh is not None and size % mesh.size:
        raise ValueError(f"{what}={size} must be a multiple of the number of devices "
                         f"({mesh.size}) to be split across them.")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leading(mesh: Mesh) -> NamedSharding:
    """Split the leading axis over the mesh (seeds), replicate the rest."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def batch_axis(mesh: Mesh) -> NamedSharding:
    """For pre-sampled batches ``(K, B, ...)``: split ``B``."""
    return NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0]))


def put(tree, sharding: NamedSharding | None):
    """Place a pytree of host arrays once: on the default device (``sharding=None``) or as global
    arrays of ``sharding``, built from this process's full host copy (works across hosts)."""
    if sharding is None:
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x)), tree)

    def one(x):
        x = np.asarray(x)
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            x = x.astype(np.float32)
        elif x.dtype == np.int64 and not jax.config.jax_enable_x64:
            x = x.astype(np.int32)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def to_host(tree):
    """Numpy copy of a pytree of (possibly multi-host, sharded) arrays, on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def constrain(tree, sharding: NamedSharding | None):
    """``with_sharding_constraint`` inside jitted code; identity without a sharding."""
    if sharding is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, sharding)


def memory_available(device=None) -> int | None:
    """Bytes free on ``device`` (default: the first one): the allocator's limit minus what is in
    use on accelerators; the host's ``MemAvailable`` for CPU devices, which share host memory.
    ``None`` when unknown."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(arrays: dict, num_updates: int, batch_size: int, num_devices: int = 1,
                 num_seeds: int = 1) -> int:
    """Refuse a configuration whose device-side data cannot fit in memory; returns the estimate.

    Counted (a lower bound; network activations come on top): the dataset ``arrays`` (rows
    ``(N, ...)``, resident on the device) and one call's batches, ``num_updates x batch_size`` rows
    of every array gathered at once plus their int32 indices, for each of ``num_seeds`` seeds,
    split over ``num_devices``.

    Raises:
      DeviceMemoryError: the estimate exceeds :func:`memory_available`; the message names
        ``batch_size`` and ``updates_per_call``.
    """
    leaves = jax.tree.leaves(arrays)
    row = sum(np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)[1:])) for a in leaves)
    dataset = sum(np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a))) for a in leaves)
    batches = num_updates * batch_size * num_seeds * (row + 4) // num_devices
    free = memory_available()
    if free is not None and batches + dataset > free:
        seeds = f" x {num_seeds} seeds" if num_seeds > 1 else ""
        raise DeviceMemoryError(
            f"batch_size={batch_size} x updates_per_call={num_updates}{seeds} needs at least "
            f"{_bytes(batches)} for one call's batches (rows of {row} B) plus {_bytes(dataset)} "
            f"of dataset on the device, which has {_bytes(free)} available; lower --batch-size "
            "or --updates-per-call.")
    return batches + dataset


def out_of_memory(err: Exception, batch_size: int, num_updates: int) -> DeviceMemoryError | None:
    """The allocator's out-of-memory error ``err`` as one message naming ``batch_size`` and
    ``updates_per_call``; ``None`` if ``err`` is another error."""
    text = str(err).strip()
    if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
        return None
    return DeviceMemoryError(
        f"the training program for batch_size={batch_size}, updates_per_call={num_updates} does "
        f"not fit in device memory ({text.splitlines()[0][:300]}); lower --batch-size or "
        "--updates-per-call.")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
