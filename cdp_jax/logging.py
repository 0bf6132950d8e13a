"""Run logging: tensorboardX scalars, ``metrics.csv`` and a tqdm progress bar.

``metrics.csv`` has one row per logged step (column ``step`` first, then the metric names in
sorted order, fixed by the first row). When a run resumes from step ``s``, rows after ``s``
(written by the interrupted process after its last checkpoint) are dropped, so a resumed run's
file reads exactly like an uninterrupted one. The tensorboard events get the same treatment: the
resumed writer purges the events after ``s`` (TensorBoard hides events at or after a purge step,
so the purge step is ``s + 1``: the scalars and the evaluation at ``s`` itself stay), and
:meth:`RunLogger.flush` before each checkpoint puts every event up to it on disk (it closes the
event file; the next event opens a new one, so a run has one file per checkpoint).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import tqdm
from tensorboardX import SummaryWriter


def truncate_csv(path: str | os.PathLike, max_step: int) -> None:
    """Drop the rows of ``path`` whose ``step`` exceeds ``max_step`` (no-op if missing)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


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
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        truncate_csv(self.csv_path, start_step)
        self._columns = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), None)
            self._columns = header[1:] if header else None
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
            self._writer().add_scalar(name, value, step)
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
                self._writer().add_scalar(f"eval/{name}", float(value), step)
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
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", *self._columns])
            writer.writerow([step, *(repr(metrics.get(c, float("nan"))) for c in self._columns)])

    def _writer(self) -> SummaryWriter:
        if self._events is None:
            # tensorboardX names a file by the second it was opened and opens it with "wb": a
            # second file within one second would truncate the first. The nanosecond suffix
            # keeps one file per writer, in the order TensorBoard reads them (by name). Only a
            # resumed run's first file purges the events of the interrupted attempt.
            self._events = SummaryWriter(str(self.run_dir), purge_step=self._purge_step,
                                         filename_suffix=f".{time.time_ns()}")
            self._purge_step = None
        return self._events

    def flush(self) -> None:
        """Put every event logged so far on disk. (tensorboardX's own ``flush`` leaves the events
        still queued for its writer thread in memory; closing the file drains the queue.)"""
        if self._events is not None:
            self._events.close()
            self._events = None

    def close(self) -> None:
        self.flush()
        self.bar.close()
