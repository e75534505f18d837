"""Default comparison tolerances per dtype, and the ini option ``golden_tolerances``.

Values match where ``|actual - golden| <= atol + rtol * |golden|``. The defaults follow the
precision of each dtype (one bfloat16 rounding step is about 0.8 %, one float32 step about
1.2e-7), so a golden recorded on another machine passes when only rounding differs.
Integers, bools and packed sub-byte floats are always compared exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_determinism.golden.dtypes import DTYPES, EXACT_KINDS

__all__ = [
    "DEFAULT_TOLERANCES",
    "EXACT",
    "Tolerance",
    "canonical_dtype",
    "default_tolerance",
    "parse_tolerances",
    "resolve_tolerance",
]


@dataclass(frozen=True)
class Tolerance:
    """How close two values must be: ``rtol`` and ``atol``, or bit for bit when ``exact``."""

    rtol: float
    atol: float
    exact: bool = False

    def describe(self) -> str:
        """Short human text: ``"rtol=1.3e-06 atol=1e-05"`` or ``"exact"``."""
        if self.exact:
            return "exact"
        return f"rtol={self.rtol:.3g} atol={self.atol:.3g}"


#: Bitwise equality.
EXACT = Tolerance(rtol=0.0, atol=0.0, exact=True)

_E4M3 = Tolerance(rtol=0.125, atol=2.0**-9)
_E5M2 = Tolerance(rtol=0.25, atol=2.0**-16)
_F16 = Tolerance(rtol=1e-3, atol=1e-5)

#: The contract's table; dtypes of an exact kind (ints, bools) are absent and always exact.
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-7, atol=1e-7),
    "complex128": Tolerance(rtol=1e-7, atol=1e-7),
    "float32": Tolerance(rtol=1.3e-6, atol=1e-5),
    "complex64": Tolerance(rtol=1.3e-6, atol=1e-5),
    "float16": _F16,
    "complex32": _F16,
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-5),
    "float8_e4m3fn": _E4M3,
    "float8_e4m3fnuz": _E4M3,
    "float8_e5m2": _E5M2,
    "float8_e5m2fnuz": _E5M2,
    "float8_e8m0fnu": EXACT,
}

# torch's other spellings of the same dtypes.
_ALIASES = {
    "half": "float16",
    "float": "float32",
    "double": "float64",
    "bf16": "bfloat16",
    "chalf": "complex32",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "short": "int16",
    "int": "int32",
    "long": "int64",
}


def canonical_dtype(name: str) -> str | None:
    """torch's spelling of a dtype name (``"torch.half"`` gives ``"float16"``), or ``None``."""
    text = name.strip().removeprefix("torch.")
    text = _ALIASES.get(text, text)
    return text if text in DTYPES else None


def _always_exact(dtype: str) -> bool:
    info = DTYPES.get(dtype)
    return info is not None and info.kind in EXACT_KINDS


def default_tolerance(dtype: str, overrides: Mapping[str, Tolerance] | None = None) -> Tolerance:
    """The tolerance a check on ``dtype`` uses when the call gives none.

    ``overrides`` (from ``golden_tolerances``) wins over the built-in table; integers,
    bools and unknown dtypes are exact.
    """
    if _always_exact(dtype):
        return EXACT
    if overrides and dtype in overrides:
        return overrides[dtype]
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


def _check_value(what: str, value: float) -> float:
    number = float(value)
    if math.isnan(number) or number < 0:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    return number


def resolve_tolerance(
    dtype: str,
    overrides: Mapping[str, Tolerance] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    exact: bool = False,
) -> Tolerance:
    """The tolerance one check uses.

    ``exact`` means bitwise; integers and bools are always exact. Otherwise per-call
    ``rtol`` / ``atol`` win, and one given alone takes the other from the table (``0``
    where the table says exact). Raises ``ValueError`` for negative or NaN tolerances.
    """
    if rtol is not None:
        rtol = _check_value("rtol", rtol)
    if atol is not None:
        atol = _check_value("atol", atol)
    if exact or _always_exact(dtype):
        return EXACT
    base = default_tolerance(dtype, overrides)
    if rtol is None and atol is None:
        return base
    return Tolerance(
        rtol=rtol if rtol is not None else base.rtol,
        atol=atol if atol is not None else base.atol,
    )


_LINE = re.compile(r"^(?P<dtype>[^:]+):(?P<rest>.*)$")


def parse_tolerances(lines: Sequence[str] | str) -> dict[str, Tolerance]:
    """Parse the ini option ``golden_tolerances``: one dtype a line.

    ``bfloat16: rtol=2e-2 atol=1e-3`` sets both; a line giving one of them keeps the
    other from the built-in table; ``float32: exact`` asks for bitwise equality. Blank
    lines and ``#`` comments are ignored. Raises ``ValueError`` naming the line for an
    unknown dtype or key, a bad or negative number, or a dtype given twice.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    result: dict[str, Tolerance] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"golden_tolerances line {number} ({raw.strip()!r})"
        match = _LINE.match(text)
        if match is None:
            raise ValueError(
                f"{where}: expected 'DTYPE: rtol=R atol=A', e.g. 'bfloat16: rtol=2e-2'"
            )
        dtype = canonical_dtype(match["dtype"])
        if dtype is None:
            known = ", ".join(sorted(DEFAULT_TOLERANCES))
            raise ValueError(f"{where}: unknown dtype {match['dtype'].strip()!r}; known: {known}")
        if _always_exact(dtype):
            raise ValueError(f"{where}: {dtype} values are always compared exactly")
        if dtype in result:
            raise ValueError(f"{where}: {dtype} is given more than once")
        result[dtype] = _parse_settings(dtype, match["rest"], where)
    return result


def _parse_settings(dtype: str, rest: str, where: str) -> Tolerance:
    values: dict[str, float] = {}
    exact = False
    for item in rest.replace(",", " ").split():
        if item == "exact":
            exact = True
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in ("rtol", "atol"):
            raise ValueError(f"{where}: unknown setting {item!r}; use rtol=..., atol=... or exact")
        if key in values:
            raise ValueError(f"{where}: {key} is given more than once")
        try:
            values[key] = _check_value(key, float(value))
        except ValueError:
            raise ValueError(f"{where}: {key} must be a number >= 0, got {value!r}") from None
    if exact:
        if values:
            raise ValueError(f"{where}: 'exact' cannot be combined with rtol or atol")
        return EXACT
    if not values:
        raise ValueError(f"{where}: give rtol=..., atol=... or exact")
    base = DEFAULT_TOLERANCES.get(dtype, EXACT)
    return Tolerance(
        rtol=values.get("rtol", base.rtol),
        atol=values.get("atol", base.atol),
    )
