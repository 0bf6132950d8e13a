"""Command-line errors for the scripts in ``experiments/``: the user's mistakes as one line, bugs
as tracebacks.

:func:`run` calls a script's ``main`` and turns the errors that are about the user's input or
files into ``error: <message>`` on stderr, printed last, with exit status 2 (as ``argparse`` does
for a bad flag):

* the project's own error types (:data:`USER_ERRORS`): missing or damaged checkpoints and
  datasets, a run directory owned by another process, a resumed run's dataset that changed,
  diverged training, not enough device memory; and ``gymnasium``'s unknown-environment errors;
* ``ValueError``, ``FileNotFoundError`` and ``FileExistsError``, but only when a ``raise``
  statement in ``cdp_jax`` or in the script's directory raised them: the checks at the boundary
  (config validation, dataset ids, run directories) do that with messages that name the field.
  The same types raised elsewhere (a shape mismatch inside numpy or JAX, ``int("x")``, a bug)
  keep their traceback;
* an ``OSError`` in which the file system refused a write or read (disk full, read-only, no
  permission: :data:`cdp_jax.files.CAUSES`), wherever it was raised: the project's own writes
  report these as :class:`cdp_jax.files.WriteError` saying what was kept; this catches the rest.

Any other exception propagates unchanged, traceback and all.

An interrupt (Ctrl-C, or SIGTERM, which :func:`run` makes act as Ctrl-C:
:func:`cdp_jax.interrupts.handled`) is one line on stderr, printed last, with exit status 130
(:data:`cdp_jax.interrupts.EXIT_INTERRUPTED`): the line of the :class:`cdp_jax.interrupts.Interrupted`
that says what was kept and how to go on (``interrupted at step 1234 of 3000; last checkpoint
kept: ...; resume with: python experiments/train.py --name quickstart --resume``), or
``interrupted (Ctrl-C)`` where nothing described it. An error that a ``finally`` block raised
while the interrupt unwound the stack counts as the interrupt.
"""

from __future__ import annotations

import errno
import linecache
import os
import sys
import traceback
from pathlib import Path

from cdp_jax import files, interrupts

# The project's (and gymnasium's) errors about the user's input or files: module -> class names.
# Looked up in sys.modules when an error occurs, so that importing this module costs nothing (an
# error of a module that was never imported cannot have been raised).
USER_ERRORS = {
    "cdp_jax.checkpoint": ("CheckpointError",),
    "cdp_jax.files": ("WriteError",),
    "cdp_jax.data.dataset": ("DatasetNotFoundError", "DatasetCorruptError", "ObservationKeyError"),
    "cdp_jax.run_directory": ("RunLockedError", "DatasetChangedError"),
    "cdp_jax.training": ("TrainingDivergedError",),
    "cdp_jax.parallel": ("DeviceMemoryError",),
    "gymnasium.error": ("UnregisteredEnv", "DependencyNotInstalled"),
}
CHECKED_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
EXIT_USER_ERROR = 2

_PACKAGE = Path(__file__).resolve().parent


def run(main, argv=None) -> int:
    """``main(argv)``'s exit status (0 if it returns a non-integer such as ``None``), with user
    errors printed as ``error: ...`` (exit status 2) and interrupts as one line (exit status
    130)."""
    code = getattr(main, "__code__", None)
    script_dir = Path(code.co_filename).resolve().parent if code else None
    with interrupts.handled():  # also while the line is printed: a repeated Ctrl-C is ignored
        try:
            status = main(argv)
        except BaseException as err:
            if (interrupt := interrupts.interrupt_in(err)) is not None:
                sys.stdout.flush()
                if not isinstance(interrupt, interrupts.Interrupted):
                    interrupt = interrupts.Interrupted(signum=interrupts.signal_of(interrupt))
                script = _as_typed(Path(code.co_filename)) if code else None
                print(interrupt.line(script, sys.argv[1:] if argv is None else argv),
                      file=sys.stderr, flush=True)
                return interrupts.EXIT_INTERRUPTED
            if not isinstance(err, Exception) or not is_user_error(err, script_dir):
                raise
            sys.stdout.flush()
            message = " ".join(str(err).split()) or type(err).__name__
            if isinstance(err, OSError) and err.errno in files.CAUSES:  # not one of our messages
                cause, remedy = files.CAUSES[err.errno]
                message = (f"{err.filename or 'a file'}: {cause} ({errno.errorcode[err.errno]}); "
                           f"{remedy}, then run the command again.")
            print(f"error: {message}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
    return status if isinstance(status, int) else 0


def _as_typed(script: Path) -> str:
    """A script's path as a user would type it: relative to the working directory when inside
    it (``experiments/train.py``), else absolute."""
    script = script.resolve()
    cwd = Path(os.getcwd()).resolve()
    return str(script.relative_to(cwd)) if script.is_relative_to(cwd) else str(script)


def is_user_error(err: BaseException, script_dir: Path | None = None) -> bool:
    """Whether ``err`` reports a problem with the user's input or files (see the module doc);
    ``raise`` statements in ``cdp_jax`` and in ``script_dir`` (the scripts) count as checks."""
    if isinstance(err, user_error_types()):
        return True
    if isinstance(err, OSError) and err.errno in files.CAUSES:
        return True
    if not isinstance(err, CHECKED_ERRORS):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    ours = (_PACKAGE,) + ((script_dir,) if script_dir else ())
    if not any(Path(last.filename).resolve().is_relative_to(root) for root in ours):
        return False
    line = last.line or linecache.getline(last.filename, last.lineno)
    return line.strip().startswith("raise")


def user_error_types() -> tuple:
    """The classes of :data:`USER_ERRORS` among the modules imported so far."""
    return tuple(getattr(sys.modules[module], name) for module, names in USER_ERRORS.items()
                 if module in sys.modules for name in names)
