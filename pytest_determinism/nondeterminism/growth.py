"""The growth line: how a golden difference grows along the top-level blocks of a model.

The top-level blocks are the children of the outermost module, with every container of
numbered blocks (``encoder`` of ``encoder.layer.0``) replaced by its blocks, recursively:
``embeddings -> layer.0 -> layer.1 -> pooler`` for a BERT, ``embeddings -> stages.0 -> ...``
for a ConvNeXt. Each is shown with the estimated relative difference of its output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_determinism.golden.golden_trace import GoldenTrace

__all__ = ["GrowthNode", "format_difference", "growth_line", "growth_of"]

# Nodes of the growth line shown in full; longer lines keep the ends and the divergence.
_GROWTH_SHOWN = 10


@dataclass(frozen=True)
class GrowthNode:
    """One top-level block on the growth line: its short name (``layer.1``), the call's
    index in the current trace, and its estimated difference (``None``: not matched)."""

    name: str
    index: int
    difference: float | None


def format_difference(value: float) -> str:
    """``0``, ``3e-3``, ``1.3e-6``, ``inf``: a relative difference, short."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return "inf"
    if 0.01 <= value < 100:
        return f"{value:.2g}"
    text = f"{value:.1e}"
    mantissa, exponent = text.split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def growth_line(growth: Sequence[GrowthNode], first: int | None = None) -> str:
    """``embeddings 0 -> layer.0 2e-7 -> ... -> pooler 4e-3``: long lines keep both ends
    and the nodes around ``first``."""
    shown = set(range(len(growth)))
    if len(growth) > _GROWTH_SHOWN:
        shown = {0, 1, 2, len(growth) - 2, len(growth) - 1}
        if first is not None:
            shown |= {first - 1, first, first + 1}
    parts: list[str] = []
    for number, node in enumerate(growth):
        if number not in shown:
            if parts and parts[-1] != "...":
                parts.append("...")
            continue
        value = node.difference
        parts.append(f"{node.name} {'?' if value is None else format_difference(value)}")
    return " -> ".join(parts)


def growth_of(trace: GoldenTrace, differences: Mapping[int, float]) -> tuple[GrowthNode, ...]:
    """The top-level blocks of ``trace`` with their difference (``differences``: per call
    index of ``trace``; a call not in it was not matched)."""
    calls = trace.calls
    children: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        children.setdefault(call.parent, []).append(index)
    roots = children.get(-1, [])
    if not roots:
        return ()
    numbered = {i for i, c in enumerate(calls) if c.qualname.rsplit(".", 1)[-1].isdigit()}
    # A call that holds numbered blocks somewhere below it is a container to open.
    holds_blocks: set[int] = set()
    for index in numbered:
        parent = calls[index].parent
        while parent != -1 and parent not in holds_blocks:
            holds_blocks.add(parent)
            parent = calls[parent].parent
    nodes = children.get(roots[0], []) if len(roots) == 1 else roots
    while any(n in holds_blocks and n not in numbered and children.get(n) for n in nodes):
        expanded: list[int] = []
        for n in nodes:
            if n in holds_blocks and n not in numbered and children.get(n):
                expanded.extend(children[n])
            else:
                expanded.append(n)
        nodes = expanded
    growth = []
    for n in nodes:
        parts = calls[n].qualname.split(".") if calls[n].qualname else [calls[n].display_name]
        label = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        found = differences.get(n)
        growth.append(GrowthNode(label, n, found))
    return tuple(growth)
