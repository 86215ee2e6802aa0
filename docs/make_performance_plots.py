"""Redraw the Performance page's plots from the benchmark runs in ``benchmarks/results/*.json``.

Run from the repository root: ``python docs/make_performance_plots.py``. It writes
``docs/performance_ratios.png`` (each contender's median step time over optax.adamw's, per
workload, one bar per run) and ``docs/performance_bound.png`` (the latest run's fraction of the
memory-bandwidth bound). Nothing is typed in: every bar is a number of a results file.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = Path(__file__).resolve().parent
REFERENCE = "optax.adamw"


def load_runs(results: Path = RESULTS) -> list[dict]:
    """The full (not ``--quick``) runs, oldest first."""
    runs = [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]
    return sorted((run for run in runs if not run.get("quick")), key=lambda run: run["date"])


def contenders(runs: list[dict], workload: str) -> list[str]:
    """Every contender timed on ``workload`` in any run, in the order of the latest run."""
    names: list[str] = []
    for run in reversed(runs):
        for entry in run["workloads"]:
            if entry["workload"] == workload:
                names += [name for name in entry["results"] if name not in names]
    return names


def ratios(run: dict, workload: str) -> dict[str, float]:
    """Median step time over optax.adamw's, per contender, on ``workload`` in ``run``."""
    for entry in run["workloads"]:
        if entry["workload"] == workload:
            results = entry["results"]
            reference = results[REFERENCE]["median_ms"]
            return {name: row["median_ms"] / reference for name, row in results.items()}
    return {}


def describe(entry: dict) -> str:
    return f"{entry['workload']}: {entry['params']:,} params in {entry['tensors']} tensors"


FLOOR = "dispatch floor"
LINE_STYLES = {"bound": "--", "identity, optax's arrays": ":", "identity, fused's arrays": "-."}
TICKS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def plot_ratios(runs: list[dict], path: Path) -> None:
    """One panel per workload: a bar per contender and run, the bound and the dispatch floors
    (a donated identity step over each contender's arrays) as vertical lines."""
    latest_run = {entry["workload"]: run for run in runs for entry in run["workloads"]}
    workloads = [
        entry for run in runs for entry in run["workloads"] if latest_run[entry["workload"]] is run
    ]  # each workload's latest measurement
    figure, axes = plt.subplots(
        len(workloads), 1, figsize=(11, 3.4 * len(workloads)), squeeze=False
    )
    height = 0.8 / len(runs)
    for axis, entry in zip(axes[:, 0], workloads):
        names = [name for name in contenders(runs, entry["workload"]) if not name.startswith(FLOOR)]
        for index, run in enumerate(runs):
            values = ratios(run, entry["workload"])
            rows = [row for row, name in enumerate(names) if name in values]
            offsets = [row + (index - (len(runs) - 1) / 2) * height for row in rows]
            widths = [values[names[row]] for row in rows]
            axis.barh(
                offsets,
                widths,
                height=height,
                label=f"{run['date'][:16].replace('T', ' ')} ({run['machine']['host']}, "
                f"{run['machine']['cpus']} CPUs)",
            )
            for offset, width in zip(offsets, widths):
                axis.text(width, offset, f" {width:.2f}x", va="center", fontsize=6)
        reference = entry["results"][REFERENCE]["median_ms"]
        lines = {"bound": entry["bound_ms"] / reference}
        lines.update(
            {
                name.split(": ", 1)[1]: row["median_ms"] / reference
                for name, row in entry["results"].items()
                if name.startswith(FLOOR)
            }
        )
        low = 0.8 * min(
            lines["bound"],
            *(
                ratios(latest_run[entry["workload"]], entry["workload"])[name]
                for name in names
                if name in entry["results"]
            ),
        )
        axis.set_xscale("log")
        axis.set_xlim(
            low, 1.6 * max(ratios(latest_run[entry["workload"]], entry["workload"]).values())
        )
        for label, value in lines.items():
            if value >= low:
                axis.axvline(
                    value,
                    color="gray",
                    linewidth=1.0,
                    linestyle=LINE_STYLES[label],
                    label=f"{FLOOR}: {label}"
                    if label != "bound"
                    else "bandwidth bound (28 bytes per parameter)",
                )
        axis.axvline(1.0, color="black", linewidth=0.8)
        ticks = [tick for tick in TICKS if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
        axis.set_xticks(ticks, [f"{tick:g}x" for tick in ticks], fontsize=8)
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_yticks(range(len(names)), names, fontsize=8)
        axis.set_ylim(len(names) - 0.5, -0.7)
        axis.set_title(describe(entry), fontsize=10)
        axis.set_xlabel(
            f"median step time / {REFERENCE}'s (log scale; lower is faster)", fontsize=8
        )
    legend: dict[str, object] = {}
    for axis in axes[:, 0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=2, fontsize=8, frameon=False
    )
    # Room on the left for the contenders' names, between panels for titles and axis labels.
    figure.subplots_adjust(left=0.25, right=0.97, top=0.96, bottom=0.09, hspace=0.45)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bound(runs: list[dict], path: Path) -> None:
    """The fraction of the bandwidth bound of each contender, per workload, in the latest run
    that measured the workload."""
    latest = {entry["workload"]: (run, entry) for run in runs for entry in run["workloads"]}
    workloads = [entry for _, entry in latest.values()]
    names = list(
        dict.fromkeys(
            name
            for run, entry in latest.values()
            for name in contenders([run], entry["workload"])
            if not name.startswith("dispatch floor")
        )
    )
    figure, axis = plt.subplots(figsize=(11, 5))
    height = 0.8 / len(workloads)
    for index, entry in enumerate(workloads):
        rows = [row for row, name in enumerate(names) if name in entry["results"]]
        axis.barh(
            [row + (index - (len(workloads) - 1) / 2) * height for row in rows],
            [100 * entry["results"][names[row]]["fraction_of_bound"] for row in rows],
            height=height,
            label=describe(entry),
        )
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(
        0,
        max(
            100.0,
            *(
                105 * entry["results"][name]["fraction_of_bound"]
                for entry in workloads
                for name in names
                if name in entry["results"]
            ),
        ),
    )
    axis.set_xlabel(
        "% of the bandwidth bound (28 bytes per parameter at the triad bandwidth the run "
        "measured first)",
        fontsize=8,
    )
    axis.set_title(
        "Latest run of each workload: "
        + ", ".join(
            sorted(
                {
                    f"{run['date'][:16].replace('T', ' ')} on {run['machine']['host']}"
                    for run, _ in latest.values()
                }
            )
        ),
        fontsize=10,
    )
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    runs = load_runs()
    plot_ratios(runs, OUT / "performance_ratios.png")
    plot_bound(runs, OUT / "performance_bound.png")


if __name__ == "__main__":
    main()
