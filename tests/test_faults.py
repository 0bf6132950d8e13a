"""Fault injection around every file the project writes or reads: a full disk, a read-only file
system, no permission, a file where a directory should be, damaged files. Each fault must end in
one error that says what happened, what was kept and what to do, and nothing written before may
be lost. The file system's refusals are simulated (monkeypatched calls raising ``OSError``); the
training loop's faults are in ``tests/test_resume.py``, the command lines' in ``tests/test_cli.py``.
"""

import errno
import json
import os
import shutil
import types

import h5py
import jax
import numpy as np
import pytest

from cdp_jax import checkpoint, cli, evaluation, files, run_config, run_directory
from cdp_jax import logging as run_logging
from cdp_jax.agents import dql
from cdp_jax.data import d4rl
from cdp_jax.data import minari as dm
from cdp_jax.data.builders import writer

CONFIG = dql.default_config(actor_hidden_dim=16, critic_hidden_dim=16, time_dim=8,
                            diffusion_steps=5, sampler_steps=2, lr_decay_steps=100)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def tree():
    return {"state": dql.init(jax.random.PRNGKey(0), CONFIG, 3, 2), "rng": jax.random.PRNGKey(1)}


def _snapshot(directory):
    """``{relative path: bytes}`` of every file under ``directory``."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("failure, shown", [
    (ENOSPC, "no space left on the device (ENOSPC)"),
    # orbax / tensorstore report a failed write as a ValueError with the errno in its text
    (ValueError("RESOURCE_EXHAUSTED: Error writing \"x\": Failed to write 10 bytes to file 11: "
                "Read-only file system [os_error_code='30']"), "the file system is read-only"),
])
def test_failed_checkpoint_save_keeps_the_earlier_ones(tmp_path, tree, monkeypatch, failure,
                                                       shown):
    manager = checkpoint.CheckpointManager(tmp_path, keep=2)
    manager.save(1, tree, {}, score=2.0)
    manager.save(2, tree, {}, score=1.0)
    before = _snapshot(tmp_path)

    def fail(self, path, *args, **kwargs):
        (path.parent / "partial").write_bytes(b"half a file")
        raise failure

    monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "save", fail)
    with pytest.raises(files.WriteError) as info:
        manager.save(3, tree, {}, score=5.0)
    message = str(info.value)
    assert f"could not write {checkpoint.step_dir(tmp_path, 3)}: {shown}" in message
    assert "the earlier checkpoints [1, 2] are unchanged" in message
    assert _snapshot(tmp_path) == before  # no partial checkpoint, best.json as it was
    monkeypatch.undo()
    restored, _ = checkpoint.restore(tmp_path, tree)
    assert checkpoint.list_steps(tmp_path) == [1, 2] and manager.best["step"] == 1


def test_a_bug_during_a_save_keeps_its_traceback(tmp_path, tree, monkeypatch):
    def fail(self, path, *args, **kwargs):
        raise TypeError("not a disk error")

    monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "save", fail)
    with pytest.raises(TypeError, match="not a disk error"):
        checkpoint.save(tmp_path, 1, tree, {})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_directory_that_is_a_file(tmp_path, tree):
    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(files.WriteError, match="a file stands where a directory is expected"):
        checkpoint.save(tmp_path / "checkpoints", 1, tree, {})
    assert (tmp_path / "checkpoints").read_text() == "not a directory"


def test_damaged_best_json_is_rebuilt_from_the_scores(tmp_path, tree):
    manager = checkpoint.CheckpointManager(tmp_path, keep=1)
    manager.save(1, tree, {}, score=5.0)
    manager.save(2, tree, {}, score=3.0)
    (tmp_path / "best.json").write_text('{"step": 1, "sc')  # cut short
    assert manager.best == {"step": 1, "score": 5.0}
    manager.save(3, tree, {}, score=1.0)  # keep=1: the best (1) survives the pruning
    assert checkpoint.list_steps(tmp_path) == [1, 3]
    assert json.loads((tmp_path / "best.json").read_text()) == {"step": 1, "score": 5.0}


def test_unreadable_checkpoint_file(tmp_path, tree, monkeypatch):
    checkpoint.save(tmp_path, 1, tree, {})
    checkpoint.save(tmp_path, 2, tree, {})

    def deny(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoint, "_sha256", deny)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.restore(tmp_path, tree)
    assert "cannot read state/" in str(info.value)
    assert "permission denied; fix the permissions. Other checkpoints: [1]." in str(info.value)


# ----------------------------------------------------------------------------- whole files


def _half_then_fail(failure):
    """A ``Path.write_text`` that writes half of the text and then raises ``failure``."""
    original = type(files.Path()).write_text

    def write_text(self, text, *args, **kwargs):
        original(self, text[:len(text) // 2], *args, **kwargs)
        raise failure

    return write_text


@pytest.mark.parametrize("write", ["files", "run_directory", "eval_record"])
def test_a_failed_json_write_keeps_the_previous_file(tmp_path, monkeypatch, write):
    path = tmp_path / ("eval.json" if write == "eval_record" else "config.json")
    record = evaluation.EvalRecord(path)

    def write_record(v):
        record.summary = lambda: {"v": v}
        record.write()

    writers = {"files": lambda v: files.write_json(path, {"v": v}),
               "run_directory": lambda v: run_directory.write_json(path, {"v": v}),
               "eval_record": write_record}
    writers[write](1)
    before = path.read_text()
    monkeypatch.setattr(files.Path, "write_text", _half_then_fail(ENOSPC))
    with pytest.raises(files.WriteError) as info:
        writers[write](2)
    monkeypatch.undo()
    assert str(info.value) == (f"could not write {path}: no space left on the device (ENOSPC). "
                               f"The previous {path.name} is unchanged. Free space on it, then "
                               "run the command again.")
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .tmp left


def test_a_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    files.write_json(path, {"v": 1})

    def replace(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(files.WriteError, match="the file system is read-only .EROFS.. The "
                                               "previous eval.json is unchanged. Choose a "
                                               "writable location"):
        files.write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1} and len(list(tmp_path.iterdir())) == 1


def test_run_directory_that_cannot_be_created(tmp_path, monkeypatch):
    blocked = tmp_path / "runs"
    blocked.write_text("a file")
    with pytest.raises(files.WriteError, match=f"could not write {blocked / 'x'}: a file stands "
                                               "where a directory is expected"):
        with run_directory.own(blocked / "x"):
            pass

    open_ = os.open

    def read_only(path, *args):
        if str(path).endswith(run_directory.LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open_(path, *args)

    monkeypatch.setattr(run_directory.os, "open", read_only)
    with pytest.raises(files.WriteError, match="the file system is read-only .EROFS.. Nothing "
                                               "was written to the run directory."):
        with run_directory.own(tmp_path / "run"):
            pass


def test_unreadable_config_json_names_the_copies_in_the_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text('{"train": {"name": "x"')
    meta = tmp_path / "checkpoints" / "step_000000020" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    with pytest.raises(ValueError) as info:
        run_config.load_run_config(tmp_path)
    assert f"{tmp_path / 'config.json'} is unreadable (JSONDecodeError" in str(info.value)
    assert f"every checkpoint's meta.json (e.g. {meta}): restore it from there" in str(info.value)


# ----------------------------------------------------------------------------- run logs


def _failing_os(fail_after_bytes: int):
    """``os`` with a ``write`` that writes ``fail_after_bytes`` bytes and then runs out of
    space (for :mod:`cdp_jax.logging` only)."""
    budget = {"left": fail_after_bytes}

    def write(fd, data):
        if budget["left"] <= 0:
            raise ENOSPC
        n = os.write(fd, data[:budget["left"]])
        budget["left"] -= n
        return n

    return types.SimpleNamespace(**{**vars(os), "write": write})


def test_metrics_csv_keeps_whole_rows_when_the_disk_fills(tmp_path, monkeypatch):
    logger = run_logging.RunLogger(tmp_path, 100, progress=False)
    logger.log_train(10, {"loss": 1.0})
    logger.flush()
    before = (tmp_path / "metrics.csv").read_bytes()
    monkeypatch.setattr(run_logging, "os", _failing_os(5))  # 5 bytes of the next row, no more
    with pytest.raises(files.WriteError, match="metrics.csv keeps its rows up to step 10"):
        logger.log_train(20, {"loss": 2.0})
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_bytes() == before  # the half row was cut off again
    logger.log_train(30, {"loss": 3.0})  # space again: the run goes on
    logger.close()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "10", "30"]


def test_resume_drops_rows_that_are_not_whole(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"step,a,b\n10,1.0,2.0\n20,1.5\n2x,1,2\n\xff\xfe\n"
                                           b"30,3.0,4.0\n40,5.0,6.0\n4")
    run_logging.truncate_csv(tmp_path / "metrics.csv", 30)
    assert (tmp_path / "metrics.csv").read_bytes() == b"step,a,b\r\n10,1.0,2.0\r\n30,3.0,4.0\r\n"


def test_event_file_write_failure_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """tensorboardX's own writer thread died on a full disk and the next log blocked forever."""
    logger = run_logging.RunLogger(tmp_path, 100, progress=False)
    logger.log_train(10, {"loss": 1.0})
    logger.flush()

    def fail(self, event):
        raise ENOSPC

    monkeypatch.setattr(run_logging.EventsWriter, "write_event", fail)
    with pytest.raises(files.WriteError, match="events.out.tfevents.*: no space left on the "
                                               "device .ENOSPC.. The tensorboard events up to "
                                               "the last checkpoint are on disk"):
        logger.log_train(20, {"loss": 2.0})
    logger.close()  # nothing left to flush: no second error, no hang
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("10,")


# ----------------------------------------------------------------------------- datasets


def _write_pendulum(dataset_id, overwrite=False):
    import gymnasium as gym

    rng = np.random.default_rng(0)
    episodes = [writer.episode_buffer(e, rng.uniform(-1, 1, (6, 3)), rng.uniform(-2, 2, (5, 1)),
                                      rng.uniform(-1, 0, 5), np.zeros(5, bool), np.arange(5) == 4)
                for e in range(3)]
    return writer.write_dataset(dataset_id, episodes, env=gym.make("Pendulum-v1"),
                                overwrite=overwrite)


@pytest.fixture(scope="module")
def pendulum(minari_root):
    return _write_pendulum("cdp/test/pendulum-v0")


def test_missing_key_in_the_hdf5_file(minari_root, pendulum):
    damaged = minari_root / "cdp/test/nokey-v0"
    shutil.copytree(pendulum, damaged)
    with h5py.File(damaged / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1"]["rewards"]
    with pytest.raises(dm.DatasetCorruptError) as info:
        dm.load("cdp/test/nokey-v0")
    assert "'rewards' doesn't exist" in str(info.value)
    assert "Delete that directory and get it again" in str(info.value)


def test_unreadable_dataset_is_not_called_corrupt(minari_root, pendulum, monkeypatch):
    def deny(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(h5py, "File", deny)
    with pytest.raises(dm.DatasetCorruptError) as info:
        dm.load("cdp/test/pendulum-v0")
    assert "cannot be read: permission denied (EACCES); fix the permissions" in str(info.value)
    assert "Delete" not in str(info.value)


@pytest.mark.parametrize("fault", ["no_space", "disk_full_while_writing", "failed_swap"])
def test_failed_dataset_write_keeps_the_existing_dataset(minari_root, pendulum, monkeypatch,
                                                         fault):
    import minari

    before = _snapshot(pendulum)
    if fault == "no_space":
        usage = shutil.disk_usage(minari_root)
        monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: usage._replace(free=1000))
        shown = "not enough free space (the dataset needs about "
    elif fault == "disk_full_while_writing":
        def create(*args, **kwargs):
            raise OSError(errno.ENOSPC, "Driver write request failed (file write failed: errno "
                          "= 28, error message = 'No space left on device')")

        monkeypatch.setattr(minari, "create_dataset_from_buffers", create)
        shown = "no space left on the device (ENOSPC)"
    else:
        replace = os.replace

        def fail_moving_the_new_one_in(src, dst):
            if str(dst) == str(pendulum) and ".cdp-build-" in str(src) and "previous" not in str(
                    src):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
            return replace(src, dst)

        monkeypatch.setattr(writer.os, "replace", fail_moving_the_new_one_in)
        shown = "input/output error"
    with pytest.raises(files.WriteError) as info:
        _write_pendulum("cdp/test/pendulum-v0", overwrite=True)
    monkeypatch.undo()
    assert f"could not write {pendulum}: {shown}" in str(info.value)
    assert "Nothing was written; the existing dataset is unchanged." in str(info.value)
    assert _snapshot(pendulum) == before
    assert not list(minari_root.glob(".cdp-build-*"))  # no staging folder left
    assert len(dm.load("cdp/test/pendulum-v0")) == 15


def test_truncated_d4rl_file(tmp_path, minari_root):
    path = tmp_path / "hopper_medium-v2.hdf5"
    with h5py.File(path, "w") as f:
        for key in d4rl.REQUIRED_KEYS:
            f.create_dataset(key, data=np.zeros((50, 3), np.float32))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(dm.DatasetCorruptError) as info:
        d4rl.import_file(path)
    assert f"D4RL file {path} is unreadable (OSError: Unable to synchronously open file " \
           "(truncated file" in str(info.value)
    assert "nothing was imported. To import it, download it again" in str(info.value)
    assert not (minari_root / "cdp/d4rl/hopper-medium-v2").exists()


# ----------------------------------------------------------------------------- the command line


def test_disk_errors_from_the_libraries_are_one_line(capsys):
    """Writes not made through cdp_jax.files (a library's own file) still end in one line."""
    def main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/runs/x/file.bin")

    assert cli.run(main) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == ("error: /data/runs/x/file.bin: no space left on the "
                                       "device (ENOSPC); free space on it, then run the command "
                                       "again.\n")
    def bug(argv):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    with pytest.raises(OSError):  # not a file system refusal: a bug, with its traceback
        cli.run(bug)
