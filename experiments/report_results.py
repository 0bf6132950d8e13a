"""Tables and figures of the evidence studies (from ``results/pointmaze/*.json``; ``--layout paper``:
the paper-protocol study's ``results/paper/*.json``, EDP as the baseline arm).

Reads what the study scripts collected (``collect`` in ``experiments/study_runner.py``) and writes

* ``results/pointmaze/tables.md``: every cell as mean ± 95% t-interval (seed count), last / best /
  running-average normalised score (with, where the results hold it, the standard error of one
  seed's evaluation over its episodes) and success rate (tasks whose environment reports success
  only), the verdict of each vanilla-vs-CDP pair, the
  paired per-seed difference (same seed, same data subset), the ablation tables, the contraction
  diagnostics, the cells not run yet and the command of every cell. Verdicts: the ``pointmaze``
  layout (the older studies) calls a tie when the two arms' intervals overlap; the ``paper``
  layout when the interval of the paired difference contains 0 (sharper: seed-to-seed variation
  common to both arms cancels);
* ``docs/figures/<prefix>_*.png`` (``pm`` by default): scores per data fraction (bars), learning
  curves, ``mu`` over sampling time, and the ablations.

::

    python experiments/report_results.py
    python experiments/report_results.py --results results/pointmaze --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdp_jax import cli, files, stats  # noqa: E402

ARM_COLORS = {"vanilla": "tab:gray", "edp": "tab:gray", "cdp": "tab:blue", "fast": "tab:orange"}
KEYS = (("running_average", "normalized_score"), ("last", "normalized_score"),
        ("best", "normalized_score"), ("running_average", "success_rate"))
DIAG_KEYS = ("mu_network_lowest", "mu_drift_lowest", "mu_drift_mean", "action_spread",
             "distance_to_data_action")


def values(cell: dict, where: str, metric: str) -> list[float]:
    return [s[where][metric] for s in cell["seeds"].values()]


def defined(cells, metric: str = "success_rate") -> bool:
    """Whether every seed of ``cells`` recorded ``metric`` at its last evaluation (a task whose
    environment reports no success records ``success_rate`` as None)."""
    return all(s["last"].get(metric) is not None for c in cells for s in c["seeds"].values())


def evaluation_sem(cell: dict, where: str, metric: str) -> float | None:
    """The standard error over episodes of one seed's ``where`` evaluation (root mean square over
    the seeds), if every seed recorded it (``<metric>_sem``; results collected before it was
    recorded hold none)."""
    sems = [s[where].get(metric + "_sem") for s in cell["seeds"].values()]
    if not sems or None in sems:
        return None
    return math.sqrt(float(np.mean(np.square(sems))))


def fmt_arm(cell: dict, where: str, metric: str, digits: int = 1) -> str:
    """``fmt`` of the seeds' values, and the evaluations' standard error in brackets if known."""
    sem = evaluation_sem(cell, where, metric)
    text = fmt(values(cell, where, metric), digits)
    return text if sem is None else f"{text} [s.e. {sem:.{digits}f}]"


def diag_values(cell: dict, key: str) -> list[float] | None:
    vals = [s["diagnostics"][key] for s in cell["seeds"].values() if s.get("diagnostics")]
    return vals or None


def fmt(vals, digits: int = 1) -> str:
    if vals is None:
        return "not measured"
    s = stats.mean_ci95(vals)
    ci = "n/a" if math.isnan(s["ci95"]) else f"{s['ci95']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {ci} ({s['n']})"


def verdict(a, b, name_a, name_b="cdp", diff=None, rule: str = "overlap") -> str:
    """Who wins: ``rule="overlap"`` compares the arms' intervals, ``"paired"`` the interval of the
    per-seed differences ``diff`` (``b - a``)."""
    v = stats.paired_verdict(diff) if rule == "paired" else stats.compare(a, b)
    return {"A": f"**{name_a}**", "B": f"**{name_b}**", "tie": "tie"}[v]


def metric_label(where: str, metric: str, cell: dict | None = None) -> str:
    """``score, running avg (last 3 evaluations)``, ``score, best (optimistic)``..."""
    what = metric.replace("normalized_score", "score").replace("_rate", "")
    if where == "running_average":
        seed = next(iter(cell["seeds"].values())) if cell else {}
        n = len(seed.get("running_average", {}).get("gradient_steps", [])) or "last"
        return f"{what}, running avg (last {n} evaluations)"
    if where == "best":
        return f"{what}, best (optimistic: max over evaluations, per seed)"
    return f"{what}, {where} (final evaluation)"


def pairs(record: dict, by_kind: bool = False) -> dict[str, dict[str, dict]]:
    """``{group: {arm: cell}}`` in the order the cells were defined; ``by_kind``: groups named
    ``"offline RL, <group>"`` / ``"imitation, <group>"`` (a study holding both kinds may give
    them the same group name, e.g. ``umaze 100%``)."""
    out: dict[str, dict[str, dict]] = {}
    for cell in record["cells"].values():
        group = cell["cell"]["group"]
        if by_kind:
            kind = "imitation" if cell["cell"].get("agent") == "dbc" else "offline RL"
            group = f"{kind}, {group}"
        out.setdefault(group, {})[cell["cell"]["arm"]] = cell
    return out


def paired(base: dict, cell: dict, where: str, metric: str) -> list[float] | None:
    """Per-seed ``cell - base`` (same seed: same data subset and evaluation starts)."""
    a, b = base["seeds"], cell["seeds"]
    common = sorted(set(a) & set(b), key=int)
    return [b[k][where][metric] - a[k][where][metric] for k in common] or None


def main_table(record: dict, title: str, base: str = "vanilla", rule: str = "overlap",
               no_success: tuple[str, ...] = ()) -> list[str]:
    """One row per (data, metric) of every group holding both arms; groups whose environment
    reports no success (a ``success_rate`` of None; in results written before it was recorded
    so, groups named with a prefix in ``no_success``, e.g. Hopper) get no success rows."""
    lines = [f"### {title}", "",
             f"| data | metric | {base} | cdp (w = 0.1) | verdict | paired cdp - {base} |",
             "|---|---|---|---|---|---|"]
    unpaired = []
    for group, arms in pairs(record).items():
        if base not in arms or "cdp" not in arms:
            unpaired.append(f"{group} (only {', '.join(arms)})")
            continue
        for where, metric in KEYS:
            if metric == "success_rate" and (_no_success(group, no_success)
                                             or not defined(arms.values())):
                continue
            a, b = values(arms[base], where, metric), values(arms["cdp"], where, metric)
            digits = 2 if metric == "success_rate" else 1
            diff = paired(arms[base], arms["cdp"], where, metric)
            lines.append(f"| {group} | {metric_label(where, metric, arms[base])} | "
                         f"{fmt_arm(arms[base], where, metric, digits)} | "
                         f"{fmt_arm(arms['cdp'], where, metric, digits)} | "
                         f"{verdict(a, b, base, diff=diff, rule=rule)} | {fmt(diff, digits)} |")
    lines.append("")
    return lines + status_lines(record, unpaired)


def fast_table(record: dict, margin: float, base: str = "edp") -> list[str]:
    """The fast penalty's arm beside the exact one (``cdp``) and weight 0 (``base``), row by row:
    the paired fast - exact difference judged by :func:`cdp_jax.stats.equivalence_verdict` with
    ``margin`` (fixed before the cells ran), fast - ``base`` by the paired rule; then `mu` at the
    lowest noise level, the action spread and the wall-clock of every arm."""
    lines = [f"### {record.get('title', 'The fast penalty')}", "",
             f"Equivalence margin ±{margin:g} points of normalised score (paired fast - cdp, 95% "
             "t-interval): equivalent inside it, different when the interval excludes 0 and "
             "is not inside, inconclusive otherwise.", "",
             f"| row | metric | {base} (w = 0) | cdp (exact) | fast | paired fast - cdp | "
             f"verdict (±{margin:g}) | paired fast - {base} | verdict vs {base} |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows, unpaired = pairs(record, by_kind=True), []
    for group, arms in rows.items():
        if not all(a in arms for a in (base, "cdp", "fast")):
            unpaired.append(f"{group} (only {', '.join(arms)})")
            continue
        for where, metric in KEYS:
            if metric == "success_rate":
                continue
            a, b, c = (values(arms[arm], where, metric) for arm in (base, "cdp", "fast"))
            to_exact = paired(arms["cdp"], arms["fast"], where, metric)
            to_base = paired(arms[base], arms["fast"], where, metric)
            lines.append(
                f"| {group} | {metric_label(where, metric, arms['cdp'])} | {fmt(a)} | {fmt(b)} | "
                f"{fmt(c)} | {fmt(to_exact)} | {stats.equivalence_verdict(to_exact, margin)} | "
                f"{fmt(to_base)} | {verdict(a, c, base, 'fast', diff=to_base, rule='paired')} |")
    lines += ["", "| row | arm | mu network (lowest) | action spread | training h | "
              "evaluation h | training s per 1,000 steps |", "|---|---|---|---|---|---|---|"]
    for group, arms in rows.items():
        for arm in (base, "cdp", "fast"):
            if arm not in arms:
                continue
            cell, cost = arms[arm], arms[arm].get("cost") or {}
            per_k = (f"{1000 * cost['train_s'] / cell['steps']:.0f}" if cost else "not recorded")
            hours = [f"{cost[k] / 3600:.2f}" if cost else "-" for k in ("train_s", "eval_s")]
            lines.append(f"| {group} | {arm} | {fmt(diag_values(cell, 'mu_network_lowest'), 2)} | "
                         f"{fmt(diag_values(cell, 'action_spread'), 3)} | {hours[0]} | "
                         f"{hours[1]} | {per_k} |")
    lines.append("")
    return lines + status_lines(record, unpaired)


def _no_success(group: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and group.startswith(prefixes)


def status_lines(record: dict, unpaired: list[str] = ()) -> list[str]:
    """What the table above leaves out (cells not run yet, groups with one arm), and the command
    of every cell in it."""
    lines = []
    if record.get("missing"):
        lines.append(f"Not run yet: {', '.join(record['missing'])}.")
    if unpaired:
        lines.append(f"Left out, one arm only so far: {'; '.join(unpaired)}.")
    commands = [cell["command"] for cell in record["cells"].values() if cell.get("command")]
    if commands:
        lines += ["", "<details><summary>commands</summary>", "", "```bash", *commands, "```", "",
                  "</details>"]
    return lines + [""] if lines else []


def cost_table(records: list[dict], title: str) -> list[str]:
    """Wall hours per cell (training, evaluation) and the total, for the cells that recorded them
    (``collect_cell``'s ``cost``): the budget actually spent."""
    rows, total = [], [0.0, 0.0]
    for record in records:
        for name, cell in record["cells"].items():
            if not (cost := cell.get("cost")):
                continue
            train_h, eval_h = cost["train_s"] / 3600, cost["eval_s"] / 3600
            total[0] += train_h
            total[1] += eval_h
            rows.append(f"| {name} | {len(cell['seeds'])} x {cell['steps']:,} | "
                        f"{train_h:.2f} | {eval_h:.2f} | {train_h + eval_h:.2f} |")
    if not rows:
        return []
    return [f"### {title}", "",
            "Wall-clock hours, all seeds of a cell trained as one vmapped program; training from "
            "`metrics.csv` (compilation included), evaluation from `eval.json`; checkpoint writes "
            "and the steps an interrupted attempt lost are not counted.", "",
            "| cell | seeds x steps | training h | evaluation h | total h |", "|---|---|---|---|---|",
            *rows, f"| **all {len(rows)} cells** | | {total[0]:.2f} | {total[1]:.2f} | "
            f"**{sum(total):.2f}** |", ""]


def diagnostics_table(records: list[dict], title: str) -> list[str]:
    lines = [f"### {title}", "", "| cell | " + " | ".join(DIAG_KEYS) + " |",
             "|---|" + "---|" * len(DIAG_KEYS)]
    for record in records:
        for name, cell in record["cells"].items():
            cells = [fmt(diag_values(cell, k), 2) for k in DIAG_KEYS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


ABLATION_TITLE = "Ablations (Diffusion-QL, umaze, 5% of the episodes)"
# Which result files hold the main, imitation and ablation tables, the baseline arm's name (per
# ablation: the arm its cells vary), the verdict rule, the groups without a success signal and the
# metric the imitation figures plot (the paper's imitation rows all reach success 1.00 on umaze,
# so their score, the metric their verdicts use, is the one that separates the arms).
LAYOUTS = {
    "pointmaze": {"offline": "offline_rl", "imitation": "imitation", "ablations": ("ablations",),
                  "base": "vanilla", "ablation_base": {}, "mu_group": "umaze 5%",
                  "rule": "overlap", "no_success": (), "imitation_metric": "success_rate"},
    # The sweep varies the weight (against EDP, weight 0); the quirk cells switch one choice in
    # the weight-0.1 pipeline (against CDP, the same weight).
    "paper": {"offline": "rl", "imitation": "il", "ablations": ("sweep", "quirks"),
              "base": "edp", "ablation_base": {"quirks": "cdp"}, "mu_group": None,  # every row
              "rule": "paired", "no_success": ("hopper",),
              "imitation_metric": "normalized_score",
              # The fast penalty's study and its equivalence margin (docs/RESULTS.md, fixed
              # before its cells ran).
              "fast": "fast", "fast_margin": 3.0},
}


def ablation_table(abl: dict, base_arm: str = "vanilla", rule: str = "overlap",
                   success: bool = True) -> list[str]:
    """The ablation cells next to the cells they vary (the first ``base_arm`` cell is the base);
    ``success=False``: no success columns (a task without a success signal)."""
    cells = abl["cells"]
    base = next((c for c in cells.values() if c["cell"]["arm"] == base_arm), None)
    head = ["arm", "score, running avg", "score, last"] + (["success, running avg"] * success)
    head += ["mu network (lowest)", f"verdict vs {base_arm} (score)",
             f"paired score - {base_arm}"]
    head += ["(success)", f"paired success - {base_arm}"] * success
    lines = [f"### {abl.get('title', ABLATION_TITLE)}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    if base is None:
        lines[2:2] = [f"No {base_arm} cell yet: no verdicts.", ""]
    for cell in cells.values():
        arm = cell["cell"]["arm"]
        ra = values(cell, "running_average", "normalized_score")
        succ = values(cell, "running_average", "success_rate")
        v = w = d = e = ""
        if base is not None and cell is not base:
            d_score = paired(base, cell, "running_average", "normalized_score")
            v = verdict(values(base, "running_average", "normalized_score"), ra, base_arm, arm,
                        diff=d_score, rule=rule)
            d = fmt(d_score)
        if success and base is not None and cell is not base:
            d_succ = paired(base, cell, "running_average", "success_rate")
            w = verdict(values(base, "running_average", "success_rate"), succ, base_arm, arm,
                        diff=d_succ, rule=rule)
            e = fmt(d_succ, 2)
        row = [arm, fmt_arm(cell, "running_average", "normalized_score"),
               fmt_arm(cell, "last", "normalized_score")]
        row += [fmt(succ, 2)] * success
        row += [fmt(diag_values(cell, "mu_network_lowest"), 2), v, d]
        row += [w, e] * success
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += status_lines(abl)
    solver = {}  # arm -> steps -> per-seed scores of the final checkpoints re-evaluated
    for cell in cells.values():
        for steps in ("5", "15", "50"):
            got = [s["solver_steps"][steps]["normalized_score"] for s in cell["seeds"].values()
                   if steps in s.get("solver_steps", {})]
            if got:
                solver.setdefault(cell["cell"]["arm"], {})[steps] = got
    if solver:
        lines += ["Final checkpoints re-evaluated with 5, 15 and 50 solver steps (normalised "
                  "score; trained with 5):", "", "| arm | 5 steps | 15 steps | 50 steps |",
                  "|---|---|---|---|"]
        for arm, by in solver.items():
            lines.append(f"| {arm} | " + " | ".join(fmt(by.get(s)) for s in ("5", "15", "50"))
                         + " |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def paired_groups(by: dict, base: str = "vanilla") -> list[str]:
    """The groups that have both a ``base`` (vanilla / EDP) and a CDP cell."""
    return [g for g, arms in by.items() if base in arms and "cdp" in arms]


def _bar(ax, groups, arms, cells_by_group, where, metric):
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        means, cis = [], []
        for g in groups:
            cell = cells_by_group[g].get(arm)
            s = stats.mean_ci95(values(cell, where, metric)) if cell else None
            means.append(s["mean"] if s else np.nan)
            cis.append(s["ci95"] if s else 0.0)
        x = np.arange(len(groups)) + (i - (len(arms) - 1) / 2) * width
        ax.bar(x, means, width, yerr=cis, capsize=3, label=arm,
               color=ARM_COLORS.get(arm, f"C{i}"))
    ax.set_xticks(np.arange(len(groups)), groups)


def fraction_bars(record: dict, metric: str, path: Path, title: str,
                  base: str = "vanilla") -> None:
    plt = _pyplot()
    by = pairs(record)
    groups = paired_groups(by, base)
    if not groups:
        return
    groups = [g for g in groups if defined(by[g].values(), metric)]
    if not groups:
        return
    fig, ax = plt.subplots(figsize=(1.4 * len(groups) + 2, 3.2))
    _bar(ax, groups, [base, "cdp"], by, "running_average", metric)
    ax.set_ylabel(metric.replace("_", " ") + " (running avg)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _thousands(ax) -> None:
    """Step ticks as 5k, 10k... (long step numbers overlap on narrow panels)."""
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))


def _curve(ax, cell: dict, metric: str, label: str, color, alpha: float) -> None:
    """A cell's learning curve: the mean over seeds, shaded by its 95% t-interval."""
    seeds = list(cell["seeds"].values())
    steps = [p["step"] for p in seeds[0]["curve"]]
    y = np.array([[p[metric] for p in s["curve"]] for s in seeds])
    m = y.mean(0)
    ci = np.array([stats.mean_ci95(col)["ci95"] for col in y.T])
    ax.plot(steps, m, label=label, color=color)
    ax.fill_between(steps, m - ci, m + ci, alpha=alpha, color=color)


def learning_curves(record: dict, metric: str, path: Path, title: str,
                    base: str = "vanilla", arms: tuple[str, ...] = ("cdp",),
                    by_kind: bool = False, sharey: bool = True) -> None:
    """One panel per group holding ``base`` and every arm of ``arms``: mean ± 95% CI."""
    plt = _pyplot()
    by = pairs(record, by_kind=by_kind)
    groups = [g for g, cells in by.items() if all(a in cells for a in (base, *arms))
              and defined(cells.values(), metric)]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(max(2.8 * len(groups), 4.8), 3.0),
                             sharey=sharey, squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for arm in (base, *arms):
            _curve(ax, by[g][arm], metric, arm, ARM_COLORS[arm], alpha=0.2)
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("gradient step")
        _thousands(ax)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mu_curves(record: dict, group: str, path: Path, title: str, base: str = "vanilla") -> None:
    plt = _pyplot()
    arms = pairs(record).get(group, {})
    if not all(a in arms for a in (base, "cdp")) or not any(
            s.get("diagnostics") for a in (base, "cdp") for s in arms[a]["seeds"].values()):
        return  # no such pair, or no diagnostics yet
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    for ax, target in zip(axes, ("network", "drift"), strict=True):
        for arm in (base, "cdp"):
            diags = [s["diagnostics"] for s in arms[arm]["seeds"].values() if s.get("diagnostics")]
            if not diags:
                continue
            tau = diags[0]["tau"]
            y = np.array([d[f"mu_{target}_curve"] for d in diags])
            ax.plot(tau, y.mean(0), "o-", label=arm, color=ARM_COLORS[arm])
        ax.set_xlabel("sampling time tau (1 = noise)")
        ax.set_title(f"mu of the {target}", fontsize=9)
        ax.invert_xaxis()
        if target == "drift":
            ax.set_yscale("symlog")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_curves(abl: dict, metric: str, path: Path) -> None:
    """Every ablation arm's learning curve (mean over seeds ± 95% CI) in one panel."""
    plt = _pyplot()
    cells = [c for c in abl["cells"].values() if c["seeds"]]
    if not cells:
        return
    fig, ax = plt.subplots(figsize=(4.4, 3.0))
    for i, cell in enumerate(cells):
        arm = cell["cell"]["arm"]
        _curve(ax, cell, metric, arm, ARM_COLORS.get(arm, f"C{i + 1}"), alpha=0.15)
    ax.set_xlabel("gradient step")
    _thousands(ax)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(abl.get("title", ABLATION_TITLE), fontsize=9, wrap=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_bars(abl: dict, path: Path) -> None:
    plt = _pyplot()
    cells = list(abl["cells"].values())
    if not cells:
        return
    names = [c["cell"]["arm"] for c in cells]
    s = [stats.mean_ci95(values(c, "running_average", "normalized_score")) for c in cells]
    fig, ax = plt.subplots(figsize=(1.0 * len(cells) + 2, 3.2))
    ax.bar(range(len(cells)), [x["mean"] for x in s], yerr=[x["ci95"] for x in s], capsize=3,
           color=[ARM_COLORS.get(n, "tab:orange") for n in names])
    ax.set_xticks(range(len(cells)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("normalised score (running avg)")
    # A long title is wrapped to the figure's width (about 11 characters per inch at size 10).
    width = fig.get_size_inches()[0]
    ax.set_title(textwrap.fill(abl.get("title", ABLATION_TITLE), int(11 * width)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(path: Path) -> dict | None:
    """A study's results file (``None`` if it does not exist); ``ValueError`` naming it and how
    to get it back if it cannot be read."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
            "nothing was written. Restore it (`git checkout -- <file>` for the committed "
            "results), or move it away and rebuild it from the run directories with the study's "
            "--collect-only.") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "results" / "pointmaze"))
    parser.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    parser.add_argument("--prefix", default="pm", help="figure file names: <prefix>_*.png")
    parser.add_argument("--label", default="PointMaze", help="task family named in the titles")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="pointmaze",
                        help="pointmaze (and fetch): offline_rl / imitation / ablations.json, "
                             "baseline arm vanilla; paper (experiments/paper_study.py): rl / il / "
                             "sweep / quirks.json, baseline arm edp")
    args = parser.parse_args(argv)
    layout = LAYOUTS[args.layout]
    base = layout["base"]
    fig = lambda name: figures / f"{args.prefix}_{name}.png"
    results, figures = Path(args.results), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    load = lambda name: load_results(results / f"{name}.json")
    offline, imitation = load(layout["offline"]), load(layout["imitation"])
    ablations = [(name, r) for name in layout["ablations"] if (r := load(name))]
    lines = [f"# {args.label} studies: generated tables", "",
             f"Written by `python experiments/report_results.py {' '.join(argv or sys.argv[1:])}`"
             "; mean ± 95% t-interval (seeds); [s.e. x]: the standard error over its episodes "
             "of one seed's evaluation (root mean square over the seeds), where recorded; "
             "success rates only for environments that report success.", ""]
    if offline:
        lines += main_table(offline, "Offline RL: EDP + Diffusion-QL", base, layout["rule"],
                            layout["no_success"])
        fraction_bars(offline, "normalized_score", fig("offline_rl_bars"),
                      f"Offline RL (Diffusion-QL), {args.label}: score by data fraction", base)
        learning_curves(offline, "normalized_score", fig("offline_rl_curves"),
                        "Offline RL learning curves (mean ± 95% CI)", base)
        groups = ([layout["mu_group"]] if layout["mu_group"] is not None
                  else paired_groups(pairs(offline), base))
        for group in groups:
            mu_curves(offline, group, fig(f"mu_{group.replace(' ', '').rstrip('%')}"),
                      f"mu along the sampling trajectories, {group}", base)
    if imitation:
        lines += main_table(imitation, f"Imitation learning: diffusion BC ({args.label})", base,
                            layout["rule"], layout["no_success"])
        metric = layout["imitation_metric"]
        word = "success" if metric == "success_rate" else "score"
        fraction_bars(imitation, metric, fig("imitation_bars"),
                      f"Imitation learning (DBC), {args.label}: {word} by data fraction", base)
        learning_curves(imitation, metric, fig("imitation_curves"),
                        "Imitation learning curves (mean ± 95% CI)", base)
    for name, abl in ablations:
        groups = {c["cell"].get("group", "") for c in abl["cells"].values()}
        success = (not any(_no_success(g, layout["no_success"]) for g in groups)
                   and defined(abl["cells"].values()))
        lines += ablation_table(abl, layout["ablation_base"].get(name, base), layout["rule"],
                                success)
        ablation_bars(abl, fig(name))
        ablation_curves(abl, "normalized_score", fig(f"{name}_curves"))
    fast = load(layout["fast"]) if layout.get("fast") else None
    if fast:
        lines += fast_table(fast, layout["fast_margin"], base)
        learning_curves(fast, "normalized_score", fig("fast_curves"),
                        "Weight 0, exact and fast penalty (mean ± 95% CI)", base,
                        arms=("cdp", "fast"), by_kind=True, sharey=False)
    present = [r for r in (offline, imitation) if r]
    listed = {name for r in present for name in r["cells"]}
    for _, extra in [*ablations, ("fast", fast)] if fast else ablations:
        # their reference cells are the main studies', listed there already
        present.append({"cells": {k: v for k, v in extra["cells"].items() if k not in listed}})
        listed |= set(extra["cells"])
    if present:
        lines += diagnostics_table(present, "Contraction diagnostics of the final EMA actors")
        lines += cost_table(present, "Compute spent")
    files.write_text(results / "tables.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
