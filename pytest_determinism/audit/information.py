"""The audit's information checks, ``threads`` and ``precision``: the model's output
computed another way (one CPU thread, a bfloat16 copy) against its output as run, with the
drift kind of every difference. They never make the exit status 1: a thread count or
bfloat16 drift is a fact to know before recording goldens, not a bug.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from pytest_determinism.audit.checks import CheckResult, Subject, seeded_leaves
from pytest_determinism.golden.compare import Comparison, compare_leaves
from pytest_determinism.golden.drift import format_ulps, ulp
from pytest_determinism.golden.tolerances import EXACT, default_tolerance
from pytest_determinism.golden.values import Leaf

__all__ = ["precision", "threads"]


def _kind_text(key: str, comparison: Comparison) -> str:
    drift = comparison.drift
    name = key or "(output)"
    if drift is None:
        return f"{comparison.mismatched} of {comparison.total} elements differ in {name}"
    if drift.ulps is None:
        return f"{drift.kind} in {name}"
    return (
        f"{drift.kind} ({format_ulps(drift.ulps)} of {comparison.golden_dtype} at "
        f"magnitude {drift.magnitude or 0.0:.3g}) in {name}"
    )


def _worst(comparisons: Mapping[str, Comparison]) -> tuple[str, Comparison] | None:
    failing = [(k, c) for k, c in comparisons.items() if c.outcome == "mismatch"]
    if not failing:
        return None
    return max(failing, key=lambda kc: (kc[1].drift is not None and kc[1].drift.ulps) or 0.0)


def _key_details(comparisons: Mapping[str, Comparison]) -> dict[str, Any]:
    return {
        key or "(output)": {
            "kind": None if c.drift is None else c.drift.kind,
            "ulps": None if c.drift is None else c.drift.ulps,
            "max_abs_diff": c.max_abs_diff,
            "max_rel_diff": c.max_rel_diff,
        }
        for key, c in comparisons.items()
        if c.outcome == "mismatch"
    }


def threads(subject: Subject) -> CheckResult:
    """One CPU thread against the default count: equal, or the drift kind and ulps."""
    import torch

    default = int(torch.get_num_threads())
    if default == 1:
        return CheckResult(
            "threads", "skipped", "torch uses one CPU thread here already: nothing to compare"
        )
    many = seeded_leaves(subject)
    torch.set_num_threads(1)
    try:
        one = seeded_leaves(subject)
    finally:
        torch.set_num_threads(default)
    result = compare_leaves(one, many, lambda _leaf: EXACT)
    details: dict[str, Any] = {"threads": [1, default], "equal": result.passed}
    worst = _worst(result.comparisons)
    if worst is None:
        return CheckResult("threads", "info", f"1 thread vs {default}: equal, bitwise", details)
    details["keys"] = _key_details(result.comparisons)
    key, comparison = worst
    explanation = ""
    if comparison.drift is not None:
        explanation = f"{key or '(output)'}: " + comparison.drift.describe(comparison.golden_dtype)
    return CheckResult(
        "threads",
        "info",
        f"1 thread vs {default}: {_kind_text(key, comparison)}",
        details,
        explanation,
    )


def _as_float32(leaf: Leaf) -> Leaf:
    if leaf.dtype != "bfloat16":
        return leaf
    data = (leaf.data.astype(np.uint32) << 16).view(np.float32)
    return Leaf("float32", leaf.shape, np.ascontiguousarray(data), leaf.device)


def precision(subject: Subject) -> CheckResult:
    """A bfloat16 copy of the model against the float32 model: the drift kind, the largest
    relative difference, and whether the default bfloat16 tolerance holds."""
    import torch

    dtypes = {str(p.dtype).removeprefix("torch.") for p in subject.model.parameters()}
    floating = {d for d in dtypes if d.startswith(("float", "bfloat"))}
    if floating != {"float32"}:
        what = ", ".join(sorted(floating)) or "no floating parameters"
        return CheckResult("precision", "skipped", f"the model is not float32 ({what})")
    tolerance = default_tolerance("bfloat16")
    try:
        low = copy.deepcopy(subject.model).to(torch.bfloat16)
    except Exception as exc:
        return CheckResult(
            "precision", "skipped", f"the model cannot be copied: {type(exc).__name__}: {exc}"
        )

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(torch.bfloat16)
        return value

    inputs = subject.inputs
    if isinstance(inputs, Mapping):
        low_inputs: Any = {key: cast(value) for key, value in inputs.items()}
    elif isinstance(inputs, tuple | list):
        low_inputs = tuple(cast(value) for value in inputs)
    else:
        low_inputs = cast(inputs)
    reference = seeded_leaves(subject)
    try:
        lowered = seeded_leaves(subject, low, low_inputs)
    except Exception as exc:
        return CheckResult(
            "precision",
            "info",
            f"the bfloat16 copy raised {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
            {"error": f"{type(exc).__name__}: {exc}"},
        )
    finally:
        del low
    pairs = {
        key: _as_float32(leaf)
        for key, leaf in lowered.items()
        if leaf.dtype == "bfloat16" and key in reference and reference[key].dtype == "float32"
    }
    compared = {key: reference[key] for key in pairs}
    if not pairs:
        return CheckResult(
            "precision",
            "skipped",
            "the bfloat16 copy gives no bfloat16 output to set against a float32 one (an "
            "output computed in float32 or wider whatever the model's dtype)",
        )
    exact = compare_leaves(pairs, compared, lambda _leaf: EXACT)
    loose = compare_leaves(pairs, compared, lambda _leaf: tolerance)
    holds = loose.passed
    details: dict[str, Any] = {
        "tolerance": {"rtol": tolerance.rtol, "atol": tolerance.atol},
        "tolerance_holds": holds,
        "keys": _key_details(exact.comparisons),
    }
    worst = _worst(exact.comparisons)
    verdict_text = "holds" if holds else "does not hold"
    rule = f"the default bfloat16 tolerance ({tolerance.describe()}) {verdict_text}"
    if worst is None:
        return CheckResult("precision", "info", f"bfloat16 copy: equal to float32; {rule}", details)
    key, comparison = worst
    rel = [c.max_rel_diff for c in exact.comparisons.values() if c.max_rel_diff is not None]
    largest = max(rel) if rel else None
    details["max_rel_diff"] = largest
    drift = comparison.drift
    kind: str = drift.kind if drift is not None else "difference"
    if drift is not None and drift.magnitude and comparison.max_abs_diff is not None:
        # In the narrower type's own ulps: a few is what running in bfloat16 costs.
        ulps = comparison.max_abs_diff / ulp("bfloat16", drift.magnitude)
        details["bfloat16_ulps"] = ulps
        kind += f" ({format_ulps(ulps)} of bfloat16 at magnitude {drift.magnitude:.3g})"
    # Keys whose drift reads alike share one line (a cache's layers, typically).
    grouped: dict[str, list[str]] = {}
    for k, c in exact.comparisons.items():
        if c.drift is not None:
            grouped.setdefault(c.drift.describe("float32"), []).append(k or "(output)")
    explanation_lines = [f"{', '.join(keys)}: {text}" for text, keys in grouped.items()]
    if not holds:
        failing = [k or "(output)" for k, c in loose.comparisons.items() if not c.passed]
        explanation_lines.append(
            f"outside the default bfloat16 tolerance: {', '.join(failing[:8])}"
            + (f" and {len(failing) - 8} more" if len(failing) > 8 else "")
            + "; a golden recorded in float32 fails against this model run in bfloat16 "
            "unless the check passes its own rtol / atol"
        )
    return CheckResult(
        "precision",
        "info",
        f"bfloat16 copy against float32: {kind}, largest relative difference "
        f"{largest if largest is None else f'{largest:.3g}'} ({key or '(output)'}); {rule}",
        details,
        "\n".join(explanation_lines),
    )
