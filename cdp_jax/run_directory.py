"""Run directories: one owning process at a time, and what a resumed run may change.

:func:`own` holds an exclusive ``fcntl.flock`` on ``<run dir>/.lock`` while a process writes the
run (config, metrics, events, checkpoints). The kernel drops the lock when the process exits, how
ever it exits (SIGKILL and crashes included), so no stale lock outlives its owner; the file itself
stays and holds the last owner's pid and host for the message a second process gets. (``flock``
is advisory and per host: two machines sharing a network file system are not excluded from each
other.)

:func:`config_changes` lists the fields in which two (possibly nested) config dataclasses differ,
as ``"field: saved X, requested Y"`` strings, so that a refused resume names every conflict.

:func:`record_environment` appends, at every start and resume of a run, the software it ran under
(package versions, cdp_jax's git commit, the JAX backend and devices) to
``<run dir>/environment.json``: a run that spans several sessions keeps one entry per attempt.

:func:`check_dataset` compares the content of the dataset a resumed run loads
(:func:`cdp_jax.data.fingerprint.record`) with the one its ``config.json`` recorded, and refuses a
change unless told to accept it (the acceptance is recorded in that attempt's entry of
``environment.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from cdp_jax import files

LOCK_FILE = ".lock"
ENVIRONMENT_FILE = "environment.json"
# The distributions whose versions can change a run's numbers or its data.
PACKAGES = ("cdp_jax", "jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy",
            "gymnasium", "gymnasium-robotics", "mujoco", "minari", "h5py")


class RunLockedError(RuntimeError):
    """Another live process owns the run directory."""


class DatasetChangedError(ValueError):
    """A resumed run's dataset holds other content than the run recorded when it started."""


@contextlib.contextmanager
def own(run_dir: str | os.PathLike):
    """Own ``run_dir`` (created if missing) for the body of the ``with`` block.

    Raises:
      RunLockedError: another process holds it; the message names the directory and, when known,
        that process's pid and host.
      cdp_jax.files.WriteError: the directory or its lock file cannot be created (a file in the
        way, a read-only file system, no permission).
    """
    run_dir = files.make_dir(run_dir)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise files.write_error(path, err, "Nothing was written to the run directory.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            raise RunLockedError(
                f"run directory {run_dir.absolute()} is in use by another process ({owner}); "
                "wait for it to finish, or choose another --name / --run-dir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def config_changes(saved, requested, prefix: str = "", ignore=()) -> list[str]:
    """``["name: saved X, requested Y", ...]`` for every field of the config dataclasses
    ``saved`` and ``requested`` that differs (nested configs by dotted path, after ``prefix``),
    except the top-level fields named in ``ignore``."""
    if type(saved) is not type(requested):
        return [f"{prefix or 'config'}: saved {type(saved).__name__}, requested "
                f"{type(requested).__name__}"]
    changes = []
    for field in dataclasses.fields(saved):
        if field.name in ignore:
            continue
        a, b = getattr(saved, field.name), getattr(requested, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            changes += config_changes(a, b, prefix=f"{name}.")
        elif a != b:
            changes.append(f"{name}: saved {a!r}, requested {b!r}")
    return changes


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: a reader never sees half a
    file, and a failed write (:class:`cdp_jax.files.WriteError`) leaves the previous one."""
    files.write_json(path, data)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> dict | None:
    """cdp_jax's commit and whether its package files differ from it, or ``None`` outside a git
    checkout (an installed wheel) or without git."""
    package = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "package_modified": bool(dirty)}


def environment() -> dict:
    """What this process runs under: time, host, Python, package versions, cdp_jax's git state,
    JAX's backend and devices. Compute it once per process start and record it in every run
    directory the process writes (two git calls and a metadata lookup per package)."""
    import jax  # noqa: PLC0415 (the lock and config helpers above need no JAX)

    return {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "python": platform.python_version(),
        "platform": platform.platform(), "packages": {p: _version(p) for p in PACKAGES},
        "git": _git_state(), "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def record_environment(run_dir: str | os.PathLike, step: int, software: dict | None = None,
                       extra: dict | None = None) -> dict:
    """Append ``software`` (default: :func:`environment` now) with ``from_step`` (the step this
    attempt starts at, 0 for a fresh run) and ``extra`` (e.g. an accepted change of the dataset,
    :func:`check_dataset`) to ``run_dir/environment.json``; returns the entry."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    entries = []
    if path.is_file():
        try:
            entries = list(json.loads(path.read_text())["attempts"])
        except (OSError, ValueError, KeyError, TypeError):  # kept aside, not fatal to the run
            try:
                os.replace(path, path.with_name(path.name + ".damaged"))
            except OSError as err:
                raise files.write_error(path, err, f"The unreadable {path.name} is unchanged.") from None
    entry = {**(environment() if software is None else software), "from_step": int(step),
             **(extra or {})}
    write_json(path, {"attempts": [*entries, entry]})
    return entry


def recorded_dataset(run_dir: str | os.PathLike) -> dict | None:
    """The dataset record (:func:`cdp_jax.data.fingerprint.record`) in ``run_dir/config.json``,
    or ``None`` for a run that has none (started before runs recorded it) or no readable
    ``config.json``."""
    try:
        recorded = json.loads((Path(run_dir) / "config.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) and "sha256" in recorded else None


def check_dataset(run_dir: str | os.PathLike, now: dict,
                  accept_changed: bool = False) -> tuple[str | None, dict | None]:
    """Compare the dataset a resumed run loaded (``now``, a
    :func:`cdp_jax.data.fingerprint.record`) with the one ``run_dir/config.json`` recorded.

    Returns ``(note, change)``: ``note`` a line for the log (``None`` when the content is the
    recorded one); ``change`` (``None`` unless a change was accepted) what the attempt's entry in
    ``environment.json`` records: ``{"dataset_changed": {"accepted": True, "recorded": ...,
    "now": ...}}``. A run without a record (started before runs recorded one) resumes with a
    note.

    Raises:
      DatasetChangedError: the content changed and ``accept_changed`` is false; the message says
        what changed and how to go on.
    """
    recorded = recorded_dataset(run_dir)
    if recorded is None:
        return (f"note: {Path(run_dir) / 'config.json'} records no fingerprint of its dataset "
                f"(the run started before runs recorded one), so a change of {now['id']} cannot "
                f"be detected; recording the current one ({describe_dataset(now)})."), None
    if recorded.get("sha256") == now["sha256"]:
        return None, None
    what = (f"the dataset {now['id']} changed since the run in {run_dir} started (recorded: "
            f"{describe_dataset(recorded)}; now: {describe_dataset(now)})")
    if not accept_changed:
        raise DatasetChangedError(
            f"{what}: start a new run (another --name / --run-dir), or pass "
            "--accept-changed-data to continue on the new data (recorded in the run's "
            f"{ENVIRONMENT_FILE}).")
    keep = ("id", "episodes", "transitions", "sha256")
    change = {"accepted": True, "recorded": {k: recorded.get(k) for k in keep},
              "now": {k: now.get(k) for k in keep}}
    return (f"note: {what}; continuing on the new data as --accept-changed-data asks (recorded "
            f"in {Path(run_dir) / ENVIRONMENT_FILE})."), {"dataset_changed": change}


def describe_dataset(recorded: dict) -> str:
    """``"1500 episodes, 200000 transitions, sha256 3f2a9c1b07de"``: a dataset record in a
    message."""
    return (f"{recorded.get('episodes')} episodes, {recorded.get('transitions')} transitions, "
            f"sha256 {str(recorded.get('sha256'))[:12]}")
