"""torch's refusal to run an op without a deterministic implementation, explained.

Under ``torch.use_deterministic_algorithms(True)`` torch raises "<op> does not have a
deterministic implementation"; :func:`explain_torch_error` turns that into the choices a
test author has.
"""

from __future__ import annotations

import re

__all__ = ["explain_torch_error", "nondeterministic_op"]

# torch's message: "<op> does not have a deterministic implementation, but you set
# 'torch.use_deterministic_algorithms(True)'. ..."
_NONDETERMINISTIC_OP = re.compile(r"(\S+) does not have a deterministic implementation")

# Ops with a well-known deterministic replacement.
_ALTERNATIVES = {
    "put_": "index_put_(..., accumulate=True) or scatter_ with unique indices",
    "index_add": "index_put_(..., accumulate=True) or a sum over one-hot indices",
    "scatter_add": "index_put_(..., accumulate=True) or a segment sum over sorted indices",
    "index_copy": "index_put_ with unique indices",
    "histc": "torch.bincount on CPU or a sort-based count",
    "kthvalue": "torch.sort and indexing",
    "median": "torch.sort and indexing, or torch.quantile",
}


def nondeterministic_op(message: object) -> str | None:
    """The op torch names in its "no deterministic implementation" error or warning
    (``message`` is the exception, the warning or their text), else ``None``."""
    match = _NONDETERMINISTIC_OP.search(str(message))
    return None if match is None else match.group(1)


def explain_torch_error(exc: BaseException) -> str | None:
    """A message for torch's error about an op without a deterministic implementation.

    Returns ``None`` for any other exception. The message names the op and the choices:
    ``@deterministic(warn_only=True)``, an alternative op, or accepting it.
    """
    op = nondeterministic_op(exc)
    if op is None:
        return None
    key = op.removesuffix("_cuda_").removesuffix("_cuda").removesuffix("_cpu")
    alternative = next(
        (alt for name, alt in _ALTERNATIVES.items() if key.startswith(name.rstrip("_"))),
        "an op with a deterministic implementation (torch.use_deterministic_algorithms' "
        "documentation lists which ops have one on which device)",
    )
    return (
        f"torch op {op} has no deterministic implementation on this device, and the test runs "
        "with torch.use_deterministic_algorithms(True), so torch refused to run it. Choose "
        "one:\n"
        "  - mark the test @deterministic(warn_only=True): torch then only warns, and "
        "--determinism still checks that repeated runs agree;\n"
        f"  - replace {op} with {alternative};\n"
        "  - or accept it: leave the test unmarked for this op (or turn deterministic "
        "algorithms off around it) and compare its outputs with a tolerance."
    )
