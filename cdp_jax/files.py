"""Writing the project's files so that a failed write loses nothing and says so in one line.

A file written whole (``config.json``, ``eval.json``, ``best.json``, a checkpoint's ``meta.json``,
a study's results) goes through :func:`write_text` / :func:`write_json`: the text goes to
``<name>.tmp`` beside the file and ``os.replace`` puts it in place, so a reader never sees half a
file, and a write that fails (disk full, read-only file system, no permission, a file where a
directory should be) leaves the previous version as it was and removes its temporary file.

Such a failure raises :class:`WriteError`, whose message names the file, says what happened in
words, what was kept and what to do; :mod:`cdp_jax.cli` prints it as one ``error:`` line. The
cause is read from the ``OSError``'s errno, or from the text of an error that carries one
(orbax / tensorstore and h5py report disk errors as ``ValueError`` / ``RuntimeError`` with the
errno in the message).
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

# errno -> (what happened, what to do).
CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space on it"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.EACCES: ("permission denied", "fix the permissions"),
    errno.EPERM: ("operation not permitted", "fix the permissions"),
    errno.ENOTDIR: ("a file stands where a directory is expected", "move that file away"),
    errno.EEXIST: ("a file stands where a directory is expected", "move that file away"),
    errno.EISDIR: ("a directory stands where a file is expected", "move that directory away"),
    errno.EIO: ("input/output error (a failing disk or network file system)",
                "check the device"),
}
# How libraries that wrap a failed write spell the errno: OSError's "[Errno 28]", tensorstore's
# "[os_error_code='28']" (inside orbax's ValueError), HDF5's "errno = 28".
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|os_error_code='(\d+)'|errno = (\d+)")


class WriteError(RuntimeError):
    """A file or directory could not be written.

    Attributes: ``path``, ``cause`` (what happened, in words), ``kept`` (what is left as it
    was), ``remedy`` (what to do) and ``retry`` (what to run after); the message joins them.
    """

    def __init__(self, path, cause: str, kept: str, remedy: str,
                 retry: str = "run the command again"):
        self.path, self.cause, self.kept, self.remedy, self.retry = path, cause, kept, remedy, retry
        super().__init__(f"could not write {path}: {cause}. {kept} "
                         f"{remedy[:1].upper()}{remedy[1:]}, then {retry}.")

    def elaborate(self, kept: str, retry: str) -> WriteError:
        """The same error with ``kept`` added to what was kept and another ``retry``."""
        return WriteError(self.path, self.cause, f"{self.kept} {kept}", self.remedy, retry)


def error_number(err: BaseException) -> int | None:
    """The errno of ``err``, or of the first error in its ``__cause__`` / ``__context__`` chain,
    or written in its text; ``None`` if there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        if match := _ERRNO_IN_TEXT.search(str(err)):
            return int(next(g for g in match.groups() if g))
        err = err.__cause__ or err.__context__
    return None


def is_disk_error(err: BaseException) -> bool:
    """Whether ``err`` is the file system refusing a write or read (:data:`CAUSES`)."""
    return error_number(err) in CAUSES


def disk_cause(err: BaseException) -> str | None:
    """``"<what happened> (<ERRNO>); <what to do>"`` when ``err`` is the file system refusing
    (:func:`is_disk_error`), else ``None``."""
    number = error_number(err)
    if number not in CAUSES:
        return None
    cause, remedy = CAUSES[number]
    return f"{cause} ({errno.errorcode.get(number, number)}); {remedy}"


def write_error(path, err: BaseException, kept: str,
                retry: str = "run the command again") -> WriteError:
    """A :class:`WriteError` for ``path`` from the exception ``err`` that the write raised."""
    number = error_number(err)
    if number in CAUSES:
        cause, remedy = CAUSES[number]
        cause = f"{cause} ({errno.errorcode.get(number, number)})"
    else:
        cause = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        remedy = "check the file system"
    return WriteError(path, cause, kept, remedy, retry)


def _kept(path: Path) -> str:
    return (f"The previous {path.name} is unchanged." if path.exists()
            else f"No {path.name} was written.")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp`` and a rename (see the module doc).

    Raises :class:`WriteError` if the file system refuses; ``path`` is then as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(path, err, _kept(path)) from None


def write_json(path: str | os.PathLike, data, **dumps_kwargs) -> None:
    """:func:`write_text` of ``json.dumps(data, indent=2, **dumps_kwargs)``."""
    write_text(path, json.dumps(data, **{"indent": 2, **dumps_kwargs}))


def make_dir(path: str | os.PathLike, kept: str = "Nothing was written.") -> Path:
    """``path`` created with its parents if missing; :class:`WriteError` if it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err, kept) from None
    return path
