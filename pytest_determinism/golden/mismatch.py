"""The text of a golden mismatch.

Every differing key gets a line that starts with what kind of difference it is, so a
reader tells them apart at a glance:

* ``numbers drifted``: same dtype and shape, values beyond the tolerance, with the kind of
  drift (:mod:`~pytest_determinism.golden.drift`): precision, rounding or computation;
* ``dtype changed``: the value's dtype is not the golden's (both named; not compared);
* ``shape changed``: the value's shape is not the golden's (not compared);
* ``missing`` / ``extra``: a key only the golden, or only this run, has;

and a ``recorded elsewhere`` line says when the golden was made with another torch, on
another device, platform, CPU or thread count, which explains rounding but not a
computation; the fix it suggests follows the kinds found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pytest_determinism.golden.compare import Comparison, Spot
from pytest_determinism.golden.drift import format_ulps
from pytest_determinism.golden.dtypes import DTYPES

__all__ = [
    "ENVIRONMENT_KEYS",
    "environment_changes",
    "format_index",
    "format_shape",
    "format_spot",
    "format_value",
    "mismatch_message",
    "update_command",
]

#: Metadata keys whose difference between the golden and this run is worth reporting.
ENVIRONMENT_KEYS = {
    "torch": "torch",
    "device": "device",
    "device_name": "GPU",
    "platform": "platform",
    "cpu": "CPU",
    "threads": "threads",
}

# More keys than this in one message are counted, not listed.
_MAX_KEYS = 20


def update_command(command_id: str) -> str:
    """The shell command that re-records the goldens of the test ``command_id`` names."""
    quoted = "'" + command_id.replace("'", "'\"'\"'") + "'"
    return f"pytest --update-golden {quoted}"


def _format_float(value: float, dtype: str) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if dtype in ("float32", "complex64"):
        return str(np.float32(value))
    if dtype in ("float16", "complex32"):
        return str(np.float16(value))
    if dtype in ("float64", "complex128"):
        return repr(value)
    # bfloat16 carries about 3 significant digits, the float8 types 1 to 2.
    return f"{value:.4g}"


def format_value(value: bool | int | float | complex, dtype: str) -> str:
    """A value at the precision its dtype carries (shortest round trip where NumPy has
    the dtype, 4 significant digits for bfloat16 and the float8 types)."""
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, complex):
        real = _format_float(value.real, dtype)
        imag = _format_float(abs(value.imag), dtype)
        sign = (
            "-" if value.imag < 0 or (value.imag == 0 and math.copysign(1, value.imag) < 0) else "+"
        )
        return f"({real}{sign}{imag}j)"
    return _format_float(float(value), dtype)


def format_index(index: tuple[int, ...]) -> str:
    """``(0, 5)`` style, ``(3,)`` for 1-d, ``()`` for a 0-d value."""
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


def _diff(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}"


def _percent(part: int, total: int) -> str:
    share = 100.0 * part / total if total else 0.0
    if 0 < share < 0.001:
        return "<0.001%"
    return f"{share:.3g}%"


def format_shape(shape: tuple[int, ...]) -> str:
    """A shape, written as :func:`format_index` writes an index."""
    return format_index(shape)


def format_spot(
    spot: Spot,
    dtype: str,
    *,
    actual: str = "actual",
    golden: str = "golden",
    golden_first: bool = False,
    where: str | None = None,
) -> str:
    """``at (0, 5): actual 1.5, golden 1.25``: a position and both values there.

    ``actual`` and ``golden`` name the two sides; ``golden_first`` puts the reference side
    (run 0, a sample alone) first; ``where`` replaces the index, for a position given in
    two frames (alone and in the batch).
    """
    sides = [
        f"{actual} {format_value(spot.actual, dtype)}",
        f"{golden} {format_value(spot.golden, dtype)}",
    ]
    if golden_first:
        sides.reverse()
    position = format_index(spot.index) if where is None else where
    return f"at {position}: {', '.join(sides)}"


def _spot_line(label: str, spot: Spot, dtype: str, with_diff: bool = True) -> str:
    if with_diff:
        return f"    {label} {_diff(spot.diff)} {format_spot(spot, dtype)}"
    return f"    {label} {format_spot(spot, dtype)}"


def _describe(key: str, comparison: Comparison) -> list[str]:
    shown = repr(key)
    c = comparison
    if c.outcome == "dtype":
        hint = _dtype_hint(c.actual_dtype, c.golden_dtype)
        return [
            f"  dtype changed: {shown} is {c.actual_dtype} now, the golden is {c.golden_dtype} "
            f"(shapes {format_shape(c.actual_shape)} and {format_shape(c.golden_shape)}); "
            f"values were not compared. {hint}"
        ]
    if c.outcome == "shape":
        return [
            f"  shape changed: {shown} has shape {format_shape(c.actual_shape)} now, the golden "
            f"{format_shape(c.golden_shape)} ({c.actual_dtype}); values were not compared"
        ]
    kind = DTYPES[c.actual_dtype].kind
    rule = (
        "exactly"
        if c.tolerance.exact or kind in ("bool", "int", "uint", "packed")
        else (f"beyond {c.tolerance.describe()}")
    )
    noun = "bits" if c.tolerance.exact and kind in ("float", "complex") else "values"
    lines = [
        f"  numbers drifted: {shown} {c.actual_dtype} {format_shape(c.actual_shape)}: "
        f"{c.mismatched} of {c.total} elements ({_percent(c.mismatched, c.total)}) differ"
        f"{'' if rule == 'exactly' else ' ' + rule}"
        + (f" (compared {noun} exactly)" if rule == "exactly" else "")
    ]
    if c.drift is not None:
        lines.append(f"    kind: {c.drift.describe(c.actual_dtype)}")
    if c.max_abs is not None and kind != "bool":
        lines.append(_spot_line("largest absolute difference", c.max_abs, c.actual_dtype))
    if c.max_rel is not None and kind != "bool":
        lines.append(_spot_line("largest relative difference", c.max_rel, c.actual_dtype))
    if c.first_mismatch is not None:
        lines.append(_spot_line("first difference", c.first_mismatch, c.actual_dtype, False))
    if c.nan_mismatches:
        assert c.first_nan_mismatch is not None
        lines.append(
            _spot_line(
                f"NaN mismatches: {c.nan_mismatches}, first",
                c.first_nan_mismatch,
                c.actual_dtype,
                False,
            )
            + ("" if c.equal_nan else " (equal_nan=False: NaN never matches)")
        )
    if c.inf_mismatches:
        assert c.first_inf_mismatch is not None
        lines.append(
            _spot_line(
                f"Inf mismatches: {c.inf_mismatches}, first",
                c.first_inf_mismatch,
                c.actual_dtype,
                False,
            )
        )
    return lines


def _dtype_hint(actual: str, golden: str) -> str:
    floats = ("float16", "bfloat16", "float32", "float64")
    if actual in floats and golden in floats:
        return (
            f"The computation now runs in {actual} where it ran in {golden} (a model.to(), "
            "autocast or a default dtype change?); if that is intended, re-record."
        )
    return "If the new dtype is intended, re-record."


def environment_changes(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """``"torch 2.4.0 -> 2.13.0"`` style items for each environment key that differs
    (keys missing on either side are skipped)."""
    changes = []
    for key, label in ENVIRONMENT_KEYS.items():
        before, now = recorded.get(key), current.get(key)
        if before is None or now is None or before == now or not (before or now):
            continue
        changes.append(f"{label} {before or '-'} -> {now or '-'}")
    return changes


def mismatch_message(
    *,
    title: str,
    path: Path | str,
    comparisons: Mapping[str, Comparison],
    missing: Sequence[str] = (),
    extra: Sequence[str] = (),
    recorded: Mapping[str, str] | None = None,
    current: Mapping[str, str] | None = None,
    command_id: str | None = None,
) -> str:
    """The full text of a failed check.

    ``title`` says what was checked (``"check 'logits'"``); ``comparisons`` holds every
    compared key (passing ones are left out of the text); ``missing`` keys are in the
    golden only, ``extra`` ones in this run only; ``recorded`` is the golden's metadata
    and ``current`` this run's, for the ``recorded elsewhere`` line; ``command_id`` is the
    test as the record command names it.
    """
    failing = [(key, c) for key, c in comparisons.items() if not c.passed]
    kinds = sorted(
        {_headline(c) for _, c in failing}
        | ({"missing keys"} if missing else set())
        | ({"extra keys"} if extra else set())
    )
    lines = [f"golden mismatch in {title}: {', '.join(kinds) or 'no difference'}"]
    lines.append(f"  golden file: {path}")
    for key, comparison in failing[:_MAX_KEYS]:
        lines.extend(_describe(key, comparison))
    if len(failing) > _MAX_KEYS:
        lines.append(f"  ... and {len(failing) - _MAX_KEYS} more differing keys")
    passed = len(comparisons) - len(failing)
    if failing and passed:
        lines.append(f"  {passed} other key{'s' if passed != 1 else ''} matched")
    if missing:
        lines.append(f"  missing: in the golden but not checked: {_keys(missing)}")
    if extra:
        lines.append(f"  extra: checked but not in the golden: {_keys(extra)}")
    lines.extend(_environment_lines(failing, recorded or {}, current or {}))
    if command_id:
        lines.append(f"  to accept the new values: {update_command(command_id)}")
    return "\n".join(lines)


def _headline(comparison: Comparison) -> str:
    return {"mismatch": "numbers drifted", "dtype": "dtype changed", "shape": "shape changed"}[
        comparison.outcome
    ]


def _environment_lines(
    failing: Sequence[tuple[str, Comparison]],
    recorded: Mapping[str, str],
    current: Mapping[str, str],
) -> list[str]:
    """What the environment explains, and the fix that fits the kinds of drift found."""
    changes = environment_changes(recorded, current)
    drifts = [(key, c.drift, c.actual_dtype) for key, c in failing if c.drift is not None]
    rounding = [(key, d, dtype) for key, d, dtype in drifts if d.kind == "rounding"]
    computed = [key for key, d, _ in drifts if d.kind == "computation"]
    if not rounding:
        if not changes:
            return []
        where = (
            "  recorded elsewhere: the golden was made in another environment ("
            + "; ".join(changes)
            + ")"
        )
        if computed and len(computed) == len(failing):
            return [
                where + "; that explains rounding, not differences this large: look for a "
                "real change (weights, code, or a library version that computes differently)"
            ]
        return [
            where + "; small float differences are expected there: loosen rtol/atol (or "
            "golden_tolerances) or re-record for this environment"
        ]
    key, widest, dtype = max(rounding, key=lambda item: item[1].ulps or 0.0)
    atol = f"atol={widest.atol_covering(dtype):g}" + (f" for {key!r}" if len(failing) > 1 else "")
    loosen = f"loosen the tolerance to cover {format_ulps(widest.ulps)} ({atol})"
    if not changes:
        return [
            "  rounding in the environment the golden was recorded in: the order of the "
            "computation changed (batch size or padding, a kernel, TF32, a library version "
            f"the metadata does not record); {loosen}, or re-record"
        ]
    fixes = []
    threads = recorded.get("threads")
    if threads and threads != current.get("threads"):
        fixes.append(
            f"pin the thread count the golden was recorded with (ini determinism_threads = "
            f"{threads}, or the marker's threads={threads})"
        )
    fixes.extend(["record goldens per environment", loosen])
    return [
        "  recorded elsewhere: the golden was made in another environment ("
        + "; ".join(changes)
        + "), which explains rounding: "
        + "; or ".join(fixes)
    ]


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS])
    more = len(keys) - _MAX_KEYS
    return shown + (f" and {more} more" if more > 0 else "")
