"""Interrupts (Ctrl-C, and the SIGTERM a scheduler sends before it kills a job) as one line, with
nothing half-written.

:func:`handled` (entered by :func:`cdp_jax.cli.run` around a script's ``main``) makes SIGTERM act
as SIGINT does: the main thread raises :class:`Interrupted`, a ``KeyboardInterrupt``, so every
``finally`` and ``with`` block on the way out runs. The code that knows what an interrupt leaves
behind catches it and raises an :class:`Interrupted` that says so (where training stopped, which
checkpoint is kept, the command that continues); :func:`cdp_jax.cli.run` prints that one line
and exits with status 130 (:data:`EXIT_INTERRUPTED`), for SIGINT and SIGTERM alike.

Inside :func:`deferred` (a checkpoint being written, a results file being replaced) an interrupt
waits until the block is done and is raised as it ends. Once an interrupt has been raised, the
repeats that follow (a second Ctrl-C, the SIGINT a terminal sends to a whole process group on top
of the one a parent forwards) are ignored, so the cleanup that saves what there is to save runs
to its end; Ctrl-\\ (SIGQUIT) or ``kill -9`` still stop a process at once, saving nothing.

Without :func:`handled` (a library call from a notebook), SIGINT raises Python's own
``KeyboardInterrupt`` as usual, SIGTERM keeps its default, and :func:`deferred` defers nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator, Sequence

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C; SIGTERM exits with it too
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Then:
    """The command that goes on after an interrupt, as :meth:`Interrupted.line` writes it.

    ``args``: the arguments after the script; ``None`` stands for the arguments the interrupted
    command was given, plus those of ``extra`` it lacks. ``label`` introduces it
    (``"resume with"``, ``"run it again with"``).
    """

    label: str = "resume with"
    args: tuple[str, ...] | None = None
    extra: tuple[str, ...] = ()

    def words(self, argv: Sequence[str]) -> list[str]:
        if self.args is not None:
            return list(self.args)
        return list(argv) + [w for w in self.extra if w not in argv]


class Interrupted(KeyboardInterrupt):
    """An interrupt, with what it left behind.

    Args:
      message: what stopped where and what is kept (``"interrupted at step 1234 of 3000; last
        checkpoint kept: ..."``); empty for an interrupt nothing has described yet.
      signum: the signal (``signal.SIGINT`` for Ctrl-C, ``signal.SIGTERM``).
      then: how to go on (:class:`Then`), or ``None``.
    """

    def __init__(self, message: str = "", *, signum: int = signal.SIGINT,
                 then: Then | None = None):
        super().__init__(message)
        self.message, self.signum, self.then = message, int(signum), then

    def line(self, script: str | None = None, argv: Sequence[str] = ()) -> str:
        """The one line a command prints: the message (or ``"interrupted (Ctrl-C)"``) and, given
        the ``script`` as the user runs it (``experiments/train.py``) and its arguments, the
        command that goes on."""
        text = self.message or f"interrupted ({describe_signal(self.signum)})"
        if self.then is not None:
            import shlex  # noqa: PLC0415 (only when a line is printed)

            command = shlex.join(["python", script or "<script>", *self.then.words(argv)])
            text += f"; {self.then.label}: {command}"
        return text

    def __str__(self) -> str:
        return self.line()


def describe_signal(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def signal_of(err: BaseException) -> int:
    """The signal behind an interrupt: :class:`Interrupted`'s, else SIGINT (Python's own
    ``KeyboardInterrupt`` comes from Ctrl-C)."""
    return err.signum if isinstance(err, Interrupted) else int(signal.SIGINT)


def interrupt_in(err: BaseException | None) -> KeyboardInterrupt | None:
    """The interrupt ``err`` is, or the one it was raised while handling (an error a ``finally``
    block raised as the interrupt unwound the stack), else ``None``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


class _Handler:
    """The signal handler :func:`handled` installs (one per process, in the main thread)."""

    def __init__(self):
        self.deferring = 0  # nesting depth of deferred()
        self.pending: int | None = None  # a signal received while deferring
        self.raised = False  # an interrupt is on its way out: repeats are ignored

    def __call__(self, signum, frame):
        if self.raised:
            return
        if self.deferring:
            self.pending = self.pending or signum
            return
        self.raised = True
        raise Interrupted(signum=signum)


_active: _Handler | None = None


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread for the body; the
    previous handlers are restored after it. Does nothing outside the main thread (Python lets
    only the main thread set handlers) or when already active."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    _active = handler
    try:
        yield
    finally:
        _active = None
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an interrupt that arrives during the body (a checkpoint or a results file being
    written, so that it is written whole or not at all) and raise it as :class:`Interrupted` once
    the body is done; an error raised by the body goes first. A no-op without :func:`handled`."""
    handler = _active
    if handler is None:
        yield
        return
    handler.deferring += 1
    try:
        yield
    finally:
        handler.deferring -= 1
    if not handler.deferring and handler.pending is not None and not handler.raised:
        signum, handler.pending = handler.pending, None
        handler.raised = True
        raise Interrupted(signum=signum)


def pending() -> bool:
    """Whether an interrupt arrived during the :func:`deferred` block running now."""
    return _active is not None and _active.pending is not None
