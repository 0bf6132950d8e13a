"""The evidence study scripts end to end on tiny datasets built locally: one real cell in CI (train
two vmapped seeds, diagnostics, JSON, tables and figures); every study's smoke run when slow."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import fetch_study  # noqa: E402
import pointmaze_study  # noqa: E402
import report_results  # noqa: E402


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A Minari root holding a small ``cdp/pointmaze/umaze-v0`` (the id the studies use)."""
    from cdp_jax.data.builders import pointmaze

    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        pointmaze.build("umaze", num_steps=4000, seed=0, dataset_id="cdp/pointmaze/umaze-v0",
                        num_reference_episodes=2)
    return path


def test_grids_match_the_issue():
    rl = pointmaze_study.cells_for("offline_rl", ("umaze", "medium"))
    assert len(rl) == 12 and {c.fraction for c in rl} == {None, 0.4, 0.05}
    assert {(c.arm, c.weight) for c in rl} == {("vanilla", 0.0), ("cdp", 0.1)}
    il = pointmaze_study.cells_for("imitation", ())
    assert {c.fraction for c in il} == {None, 0.5, 0.1, 0.05} and all(c.agent == "dbc" for c in il)
    abl = pointmaze_study.cells_for("ablations", ())
    assert {c.weight for c in abl} >= {0.01, 0.1, 1.0, 10.0}
    assert {s for c in abl for s in c.sets} == {"contraction.target=drift",
                                                "contraction.penalty=frobenius",
                                                "contraction.window=1.0"}
    fetch = fetch_study.cells(["push", "pickandplace"], ["mlp", "unet"], [1.0, 0.5, 0.1, 0.05])
    assert len(fetch) == 32 and len({c.name for c in fetch}) == 32
    fetch_abl = fetch_study.ablation_cells()
    assert fetch_abl[:2] == [c for c in fetch if c.group == "push unet 100%"]
    windows = [[s for s in c.sets if s.startswith("contraction.window=")] for c in fetch_abl]
    assert windows == [["contraction.window=1.0"]] * 3 + [["contraction.window=0.1"]]
    assert [c.weight for c in fetch_abl] == [0.0, 0.1, 0.01, 0.1]
    with pytest.raises(ValueError, match="Unknown study"):
        pointmaze_study.cells_for("bogus", ())


def test_one_cell_end_to_end(minari_root, tmp_path, monkeypatch):
    """CI version: the 5% CDP cell of the offline-RL study, 2 seeds, 20 steps."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    runs, out, figs = tmp_path / "runs", tmp_path / "results", tmp_path / "figs"
    argv = ["--study", "offline_rl", "--mazes", "umaze", "--cells", "dql_umaze_f5_cdp",
            "--quick", "--runs-root", str(runs), "--out", str(out)]
    assert pointmaze_study.main(argv) == 0
    record = json.loads((out / "offline_rl.json").read_text())
    cell = record["cells"]["dql_umaze_f5_cdp"]
    assert set(cell["seeds"]) == {"0", "1"} and cell["cell"]["weight"] == 0.1
    for seed in cell["seeds"].values():
        assert [p["step"] for p in seed["curve"]] == [10, 20]
        assert seed["last"]["gradient_step"] == 20
        diag = seed["diagnostics"]
        assert len(diag["mu_drift_curve"]) == len(diag["tau"]) == 5  # the run's 5 solver steps
        assert all(math.isfinite(diag[k]) for k in ("mu_network_lowest", "action_spread",
                                                    "distance_to_data_action"))
        assert diag["action_spread"] > 0
        assert "contraction/mu_mean" in seed["final_train_log"]
    # Resuming skips the finished cell (no retraining: the log is left as it was).
    log = runs / "offline_rl" / "dql_umaze_f5_cdp.log"
    stamp = log.stat().st_mtime_ns
    assert pointmaze_study.main(argv) == 0 and log.stat().st_mtime_ns == stamp
    assert report_results.main(["--results", str(out), "--figures", str(figs)]) == 0
    tables = (out / "tables.md").read_text()
    assert "dql_umaze_f5_cdp" in tables  # the diagnostics row (no vanilla arm: no pair table)


@pytest.mark.slow
def test_every_study_quick(minari_root, tmp_path, monkeypatch):
    """Every PointMaze study's smoke run (2 seeds, 20 steps per cell), then the report."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    out, figs = tmp_path / "results", tmp_path / "figs"
    argv = ["--quick", "--mazes", "umaze", "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
    assert pointmaze_study.main(argv) == 0
    for study in ("offline_rl", "imitation", "ablations"):
        record = json.loads((out / f"{study}.json").read_text())
        assert record["missing"] == [] and record["cells"]
    abl = json.loads((out / "ablations.json").read_text())
    seed = abl["cells"]["dql_umaze_f5_vanilla"]["seeds"]["0"]
    assert set(seed["solver_steps"]) == {"5", "15", "50"}
    assert report_results.main(["--results", str(out), "--figures", str(figs)]) == 0
    assert {p.name for p in figs.glob("*.png")} >= {"pm_offline_rl_bars.png",
                                                    "pm_imitation_bars.png", "pm_ablations.png"}


@pytest.mark.slow
def test_fetch_study_quick(tmp_path, monkeypatch):
    """The manipulation study's smoke run on a 4-demonstration Push dataset: MLP and UNet, 2 arms."""
    from cdp_jax.data.builders import fetch

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    fetch.build("push", num_demos=4, dataset_id="cdp/fetch/push-v0", num_reference_episodes=1)
    out = tmp_path / "results"
    argv = ["--quick", "--tasks", "push", "--fractions", "1.0", "--runs-root",
            str(tmp_path / "runs"), "--out", str(out)]
    assert fetch_study.main(argv) == 0
    record = json.loads((out / "imitation.json").read_text())
    assert len(record["cells"]) == 4 and record["missing"] == []
    assert report_results.main(["--results", str(out), "--figures", str(tmp_path / "figs"),
                                "--prefix", "fetch", "--label", "Fetch"]) == 0
