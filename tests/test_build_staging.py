"""A dataset build killed outright (SIGKILL: no ``finally`` runs) leaves its hidden scratch
directory under the datasets root; the next build removes it and says so, and leaves a running
build's scratch directory alone (cdp_jax/data/builders/writer.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from cdp_jax.data.builders import writer

# A build in a fresh process that dies halfway through writing, as under `kill -9` or the OOM
# killer: Minari's writer is replaced by one that writes part of a file, then kills the process.
KILLED_BUILD = textwrap.dedent("""
    import os, signal
    import minari
    from cdp_jax.data.builders import writer

    def write_a_little_then_die(dataset_id, *args, **kwargs):
        # MINARI_DATASETS_PATH points into the build's scratch directory here.
        with open(os.path.join(os.environ["MINARI_DATASETS_PATH"], "partial.hdf5"), "wb") as f:
            f.write(b"half an episode" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)

    minari.create_dataset_from_buffers = write_a_little_then_die
    writer.write_dataset("cdp/test/killed-v0", [], env="CartPole-v1")
""")


def _scratch_dirs(root):
    return sorted(root.glob(writer.SCRATCH_PREFIX + "*"))


def test_next_build_removes_what_a_killed_build_left(minari_root, capsys):
    out = subprocess.run([sys.executable, "-c", KILLED_BUILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    (left,) = _scratch_dirs(minari_root)
    assert (left / "partial.hdf5").is_file() and (left / writer.LOCK_NAME).is_file()
    capsys.readouterr()
    with writer._scratch_directory(minari_root, "cdp/test/running-v0") as running:
        writer.check_target("cdp/test/next-v0", overwrite=False)  # what every builder calls first
        assert running.is_dir()  # a build in progress (its lock held) is not touched
    err = capsys.readouterr().err
    assert not left.exists() and not _scratch_dirs(minari_root)
    assert f"note: removed {left} (" in err
    assert "left by an interrupted dataset build (building 'cdp/test/killed-v0', process" in err
    assert str(running) not in err and len(err.splitlines()) == 1
    writer.check_target("cdp/test/next-v0", overwrite=False)
    assert capsys.readouterr().err == ""  # nothing left: nothing said


def test_stale_scratch_without_a_lock_and_an_interrupted_overwrite(tmp_path):
    # A build killed between moving the old dataset aside and moving the new one in: the old one
    # waits in `previous` and goes back in place.
    killed = tmp_path / f"{writer.SCRATCH_PREFIX}overwrite"
    (killed / "previous" / "data").mkdir(parents=True)
    (killed / "previous" / "data" / "main_data.hdf5").write_bytes(b"x" * 100)
    (killed / writer.LOCK_NAME).write_text(json.dumps({"dataset_id": "cdp/test/old-v0",
                                                       "pid": 1}))
    # Directories without a lock file: stale only once old (a new build writes its lock at once).
    fresh, old = tmp_path / f"{writer.SCRATCH_PREFIX}fresh", tmp_path / f"{writer.SCRATCH_PREFIX}old"
    fresh.mkdir(), old.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    lines = writer.remove_stale_scratch(tmp_path)
    assert _scratch_dirs(tmp_path) == [fresh]
    restored = tmp_path / "cdp/test/old-v0/data/main_data.hdf5"
    assert restored.read_bytes() == b"x" * 100
    assert len(lines) == 2
    assert any("building 'cdp/test/old-v0'" in line and "restored the previous 'cdp/test/old-v0'"
               in line for line in lines)
    assert any(f"removed {old}" in line and "unknown dataset" in line for line in lines)
