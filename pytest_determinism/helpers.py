"""Assertions usable in any test: ``assert_deterministic`` and ``assert_batch_invariant``.

Neither imports torch at import time; both work on whatever ``fn`` returns, through
:func:`pytest_determinism.golden.values.flatten` (tensors on any device, NumPy arrays, numbers,
nested dicts / lists / tuples / dataclasses, Hugging Face ``ModelOutput`` and caches).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from pytest_determinism.errors import NondeterminismError
from pytest_determinism.golden.tolerances import resolve_tolerance
from pytest_determinism.golden.values import Leaf, flatten
from pytest_determinism.nondeterminism.batch import check_batch
from pytest_determinism.nondeterminism.runs import check_runs
from pytest_determinism.nondeterminism.torch_errors import explain_torch_error
from pytest_determinism.state.context import current_seed, note_helper_check, tolerance_overrides

__all__ = ["assert_batch_invariant", "assert_deterministic"]


def assert_deterministic(
    fn: Callable[..., Any],
    *args: Any,
    runs: int = 2,
    seed: int | None = None,
    stochastic: bool = False,
    **kwargs: Any,
) -> Any:
    """Assert that ``fn(*args, **kwargs)`` gives bitwise-identical results run after run.

    ``fn`` is called ``runs`` times, every RNG reseeded with ``seed`` before each call
    (``None``: the seed of the marked test now running, else ``0``), and unless
    ``stochastic`` once more under the seed probe: every random draw inside torch module
    forward calls comes from another seed, everything else is unchanged, so a forward pass
    that depends on random state (dropout left in training mode, random masking) fails.
    Results are compared bit for bit (keys, dtypes, shapes, NaN positions); an exception is
    a result too, and one raised alike by every run is re-raised (with a note on the choices
    when torch refused an op that has no deterministic implementation).

    On failure raises :class:`~pytest_determinism.errors.NondeterminismError` with the
    verdict's message, which names the first torch module whose output diverged.
    Returns the first run's result. Every RNG is left as it was found. Inside a test that
    ``--determinism`` is itself checking, this call's runs decide: the CI mode's trace and
    probe stand aside while it runs.
    """
    __tracebackhide__ = True  # a failure points at the caller, not at this helper
    if runs < 1:
        raise ValueError(f"assert_deterministic: runs must be at least 1, got {runs}")
    note_helper_check()
    if seed is None:
        in_force = current_seed()
        seed = 0 if in_force is None else in_force
    results: list[Any] = []

    def run_once(index: int) -> Mapping[str, Leaf]:
        result = fn(*args, **kwargs)
        if index == 0:
            results.append(result)
        if result is None:
            return {}
        return _comparable(
            result,
            "assert_deterministic: fn's result",
            "return tensors, arrays, numbers or dicts / lists / tuples of them, "
            "e.g. `lambda: model(**batch).logits`",
        )

    # Source lines in the report are shown relative to where pytest (or the caller) runs.
    verdict = check_runs(run_once, runs=runs, seed=seed, stochastic=stochastic, rootdir=os.getcwd())
    if not verdict.ok:
        raise NondeterminismError(verdict.message)
    first_error = verdict.errors[0]
    if first_error is not None:
        explanation = explain_torch_error(first_error)
        # Exception notes exist from Python 3.11 on; the error itself is what matters.
        if explanation is not None and hasattr(first_error, "add_note"):
            first_error.add_note(explanation)
        raise first_error
    return results[0]


def _comparable(value: Any, what: str, advice: str) -> dict[str, Leaf]:
    """``flatten(value)``, its errors reworded for the helper the user called."""
    try:
        return flatten(value)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("golden_tensor: ")
        raise TypeError(f"{what} cannot be compared: {message} ({advice})") from exc


# --------------------------------------------------------------------------------------
# Batch invariance


def assert_batch_invariant(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    batch_dim: int = 0,
    mask_key: str | None = "attention_mask",
    exact: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert that every sample's output alone equals its row of the batched output.

    ``inputs`` is a tensor, a dict of tensors (``fn(**inputs)``) or a tuple of tensors
    (``fn(*inputs)``) sharing the batch dimension ``batch_dim``; other values in a dict or
    tuple are passed to every call unchanged. ``fn`` returns a tensor or a nested output
    (dicts, lists, tuples, ``ModelOutput`` with its cache); outputs without the batch
    dimension are not compared.

    When a dict holds ``mask_key``, each sample runs alone *without its padding*: the
    positions where its mask is 0 are dropped from every input whose shape starts with the
    mask's shape (``input_ids``, ``position_ids``, ``inputs_embeds``...), and of each batched
    output whose dimension after the batch dimension has the padded length (and the
    sample's real length when it runs alone) only the sample's real positions are compared.
    Left and right padding both work. With left padding, pass
    ``position_ids`` computed from the mask, or the padded sample's positions are shifted.

    ``exact=True`` compares bit for bit; ``exact=False`` uses ``rtol`` / ``atol``, taking
    what is not given from the dtype's default tolerance (the ``golden_tensor`` table, the
    project's ini ``golden_tolerances`` included).
    Giving ``rtol`` or ``atol`` implies ``exact=False``.

    Raises ``AssertionError`` with a report saying, per sample, whether it differs, the
    largest absolute and relative differences and the first differing position.
    """
    __tracebackhide__ = True  # a failure points at the caller, not at this helper
    if batch_dim < 0:
        raise ValueError(
            f"assert_batch_invariant: batch_dim must be >= 0, got {batch_dim} "
            "(count dimensions from the front)"
        )
    note_helper_check()
    exact = exact and rtol is None and atol is None
    overrides = tolerance_overrides()
    report = check_batch(
        fn,
        inputs,
        tolerance_for=lambda dtype: resolve_tolerance(
            dtype, overrides, rtol=rtol, atol=atol, exact=exact
        ),
        batch_dim=batch_dim,
        mask_key=mask_key,
        who="assert_batch_invariant",
    )
    if not report.ok:
        raise AssertionError(report.message)
