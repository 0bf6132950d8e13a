"""Run logging: tensorboard scalars, ``metrics.csv`` and a tqdm progress bar.

``metrics.csv`` has one row per logged step (column ``step`` first, then the metric names in
sorted order, fixed by the first row). When a run resumes from step ``s``, rows after ``s``
(written by the interrupted process after its last checkpoint) are dropped, so a resumed run's
file reads exactly like an uninterrupted one. The tensorboard events get the same treatment: the
resumed writer purges the events after ``s`` (TensorBoard hides events at or after a purge step,
so the purge step is ``s + 1``: the scalars and the evaluation at ``s`` itself stay), and
:meth:`RunLogger.flush` before each checkpoint puts every event up to it on disk (it closes the
event file; the next event opens a new one, so a run has one file per checkpoint).

Both files are written in the calling thread, so a write the file system refuses (disk full,
read-only, no permission) raises :class:`cdp_jax.files.WriteError` at once, naming what is kept:
a row that could not be appended whole is cut off again, and rows that are not whole (a write cut
short by a crash) are dropped with the rows after ``s`` when the run resumes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import tqdm
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import scalar

from cdp_jax import files


def truncate_csv(path: str | os.PathLike, max_step: int) -> None:
    """Drop the rows of ``path`` whose ``step`` exceeds ``max_step``, and rows that are not whole
    (another number of fields than the header, or no integer step); no-op if missing."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise files.write_error(path, err, f"{path.name} is unchanged.") from None
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and _step(r) is not None
                        and _step(r) <= max_step]
    files.write_text(path, _csv_text(kept))


def _step(row: list[str]) -> int | None:
    try:
        return int(row[0])
    except ValueError:
        return None


def _csv_text(rows: list[list]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


class RunLogger:
    """Scalars to tensorboard (``run_dir/``) and ``run_dir/metrics.csv``, plus a progress bar.

    Args:
      run_dir: output directory (created).
      total_steps: gradient steps of the whole run (the progress bar's total).
      start_step: the step the run starts (or resumes) from.
      progress: show a tqdm bar.
      resumed: a resumed run (the default: any ``start_step > 0``); its earlier events after
        ``start_step`` are purged.
    """

    def __init__(self, run_dir: str | os.PathLike, total_steps: int, start_step: int = 0,
                 progress: bool = True, resumed: bool | None = None):
        self.run_dir = files.make_dir(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        truncate_csv(self.csv_path, start_step)
        self._columns = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="", errors="replace") as f:
                header = next(csv.reader(f), None)
            self._columns = header[1:] if header else None
        self._csv_step = start_step  # the rows up to it are on disk
        resumed = start_step > 0 if resumed is None else resumed
        self._purge_step = start_step + 1 if resumed else None
        self._events = None
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not progress,
                             dynamic_ncols=True, desc="train")
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._postfix: dict = {}

    def log_train(self, step: int, metrics: dict) -> dict:
        """Log training scalars at ``step``; adds ``time/steps_per_s``. Returns what was logged."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["time/steps_per_s"] = rate
        for name, value in metrics.items():
            self._add_scalar(name, value, step)
        self._write_csv(step, metrics)
        self.bar.update(step - self.bar.n)
        self._postfix["steps/s"] = f"{rate:.1f}"
        if "actor/loss" in metrics:
            self._postfix["actor"] = f"{metrics['actor/loss']:.3f}"
        self.bar.set_postfix(self._postfix, refresh=False)
        return metrics

    def log_eval(self, step: int, metrics: dict) -> None:
        """Log evaluation scalars (tensorboard only; ``eval.json`` holds the full record)."""
        for name, value in metrics.items():
            if isinstance(value, (int, float, np.floating)) and math.isfinite(float(value)):
                self._add_scalar(f"eval/{name}", float(value), step)
        if "normalized_score" in metrics:
            self._postfix["eval"] = f"{metrics['normalized_score']:.1f}"
            self.bar.set_postfix(self._postfix)

    def reset_timer(self) -> None:
        """Exclude the time since the last log (evaluation, checkpoint) from the next steps/s."""
        self._last_time = time.perf_counter()

    def write(self, message: str) -> None:
        """Print above the progress bar."""
        self.bar.write(message)

    def _write_csv(self, step: int, metrics: dict) -> None:
        new_file = self._columns is None
        if new_file:
            self._columns = sorted(metrics)
        rows = [["step", *self._columns]] if new_file else []
        rows.append([step, *(repr(metrics.get(c, float("nan"))) for c in self._columns)])
        data = _csv_text(rows).encode()
        try:
            fd = os.open(self.csv_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    while data:
                        data = data[os.write(fd, data):]
                except OSError:
                    os.ftruncate(fd, size)  # no half row; truncating needs no space
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            if new_file:
                self._columns = None
            raise files.write_error(self.csv_path, err, f"{self.csv_path.name} keeps its rows "
                                    f"up to step {self._csv_step}.") from None
        self._csv_step = step

    def _write_event(self, event: Event) -> None:
        try:
            if self._events is None:
                # EventsWriter names a file by the second it was opened and opens it with "wb": a
                # second file within one second would truncate the first. The nanosecond suffix
                # keeps one file per writer, in the order TensorBoard reads them (by name). Only
                # a resumed run's first file purges the events of the interrupted attempt.
                self._events = EventsWriter(str(self.run_dir / "events"), f".{time.time_ns()}")
                if self._purge_step is not None:
                    self._events.write_event(Event(step=self._purge_step,
                                                   file_version="brain.Event:2"))
                    self._events.write_event(Event(step=self._purge_step, session_log=SessionLog(
                        status=SessionLog.START)))
                    self._purge_step = None
            self._events.write_event(event)
        except OSError as err:
            self._events_failed(err)

    def _add_scalar(self, name: str, value: float, step: int) -> None:
        self._write_event(Event(summary=scalar(name, value), step=int(step),
                                wall_time=time.time()))

    def _events_failed(self, err: OSError):
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(OSError, ValueError):
                events.close()
        raise files.write_error(self.run_dir / "events.out.tfevents.*", err,
                                "The tensorboard events up to the last checkpoint are on disk "
                                "(written before it).") from None

    def flush(self) -> None:
        """Put every event logged so far on disk (and close the event file)."""
        events, self._events = self._events, None
        if events is not None:
            try:
                events.close()
            except OSError as err:
                self._events_failed(err)

    def close(self) -> None:
        self.flush()
        self.bar.close()
