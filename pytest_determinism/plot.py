"""``diff --plot FILE.png``: the estimated relative difference per module call along the model.

One point per matched module call (x: the order in which the calls returned their outputs,
so a block comes after the calls inside it and the line reads as the data flows; y: the
estimated relative difference of its output, log scale; calls whose bits are equal sit on
the bottom edge), the tolerance
as a line, the first call beyond it marked and named, the top-level blocks named along the
x axis, and the place where the sequences of calls part, if they do. matplotlib (the extra
``plot``) is imported only here, with the Agg backend: nothing is shown, a file is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from pytest_determinism.nondeterminism.growth import format_difference
from pytest_determinism.nondeterminism.origin import Origin

__all__ = ["MISSING_EXTRA", "matplotlib_missing", "plot_origin"]

#: What to install for ``--plot``.
MISSING_EXTRA = 'matplotlib is not installed: pip install "pytest-determinism[plot]"'


def matplotlib_missing() -> bool:
    """Whether matplotlib cannot be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is None


def plot_origin(origin: Origin, path: Path, title: str) -> None:
    """Draw ``origin``'s relative differences per call into the PNG file ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    differences = origin.differences
    positive = [d.difference for d in differences if 0 < d.difference < math.inf]
    tolerances = [d.tolerance for d in differences if d.tolerance > 0]
    low = min([*positive, *tolerances, 1e-8]) / 10
    high = max([*positive, *tolerances, 1.0]) * 10
    floor, ceiling = low * 1.5, high / 1.5

    def shown(value: float) -> float:
        return floor if value == 0 else ceiling if math.isinf(value) else value

    # x: position in the order the calls returned, 1-based.
    rank = {index: number + 1 for number, index in enumerate(origin.returned)}
    differences = tuple(
        sorted((d for d in differences if d.index in rank), key=lambda d: rank[d.index])
    )
    figure, axes = plt.subplots(figsize=(12, 4.8), dpi=110)
    within = [d for d in differences if not d.beyond]
    beyond = [d for d in differences if d.beyond]
    axes.scatter(
        [rank[d.index] for d in within],
        [shown(d.difference) for d in within],
        s=14,
        color="tab:blue",
        label="within tolerance (bottom edge: bits equal)",
        zorder=3,
    )
    axes.scatter(
        [rank[d.index] for d in beyond],
        [shown(d.difference) for d in beyond],
        s=18,
        color="tab:red",
        label="beyond tolerance",
        zorder=3,
    )
    if differences:
        axes.step(
            [rank[d.index] for d in differences],
            [d.tolerance or floor for d in differences],
            where="mid",
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label="tolerance (rtol of the output's dtype)",
        )
    first = origin.first
    if first is not None and first.index in rank:
        axes.axvline(rank[first.index], color="tab:red", linewidth=1, alpha=0.6)
        axes.annotate(
            f"first beyond tolerance: call {first.index + 1}\n{first.call.display_name} "
            f"({first.call.cls})\n~{format_difference(first.difference)}, verdict: "
            f"{origin.verdict}{'' if origin.inputs_match else ' (its inputs differ already)'}",
            xy=(rank[first.index], shown(first.difference)),
            xytext=(0.02, 0.97),
            textcoords="axes fraction",
            va="top",
            fontsize=8,
            color="tab:red",
            arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.6},
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "tab:red"},
        )
    if origin.parting_index is not None and origin.parting_index in rank:
        axes.axvline(
            rank[origin.parting_index],
            color="tab:purple",
            linestyle=":",
            linewidth=1.2,
            label="the sequences of calls part",
        )
    nodes = [node for node in origin.growth if node.index in rank]
    for node in nodes:
        axes.axvline(rank[node.index], color="0.85", linewidth=0.8, zorder=0)
    axes.set_xticks([rank[node.index] for node in nodes])
    axes.set_xticklabels([node.name for node in nodes], rotation=45, ha="right", fontsize=8)
    axes.set_yscale("log")
    axes.set_ylim(low, high)
    axes.set_xlim(0, max(origin.current_calls, 1) + 1)
    axes.set_xlabel(
        f"module calls in the order they returned (1 to {origin.current_calls}); "
        "ticks: the output of each top-level block"
    )
    axes.set_ylabel("estimated relative difference (log)")
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", which="major", color="0.9")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
