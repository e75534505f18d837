"""Assertions usable in any test: ``assert_deterministic`` and ``assert_batch_invariant``.

Neither imports torch at import time; both work on whatever ``fn`` returns, through
:func:`pytest_determinism.golden.values.flatten` (tensors on any device, NumPy arrays, numbers,
nested dicts / lists / tuples / dataclasses, Hugging Face ``ModelOutput`` and caches).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_determinism.errors import NondeterminismError
from pytest_determinism.golden.compare import Comparison, Spot, compare
from pytest_determinism.golden.mismatch import format_index, format_spot
from pytest_determinism.golden.tolerances import resolve_tolerance
from pytest_determinism.golden.values import Leaf, flatten
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


# --------------------------------------------------------------------------------------
# Batch invariance


@dataclass(frozen=True)
class _Batch:
    """The inputs of ``assert_batch_invariant``, split by sample."""

    kind: str  # "tensor", "dict" or "tuple"
    value: Any
    size: int
    mask: Any | None  # the mask tensor, for a dict holding mask_key


def _batch_size(name: str, tensor: Any, batch_dim: int) -> int:
    if tensor.dim() <= batch_dim:
        raise ValueError(
            f"assert_batch_invariant: {name} has shape {tuple(tensor.shape)}, with no "
            f"dimension {batch_dim} to split into samples; pass batch_dim= or leave it out "
            "of the inputs"
        )
    return int(tensor.shape[batch_dim])


def _parse_inputs(inputs: Any, batch_dim: int, mask_key: str | None) -> _Batch:
    import torch

    if isinstance(inputs, torch.Tensor):
        return _Batch("tensor", inputs, _batch_size("the input", inputs, batch_dim), None)
    if isinstance(inputs, Mapping):
        kind, items = "dict", [(str(key), value) for key, value in inputs.items()]
    elif isinstance(inputs, tuple | list):
        kind, items = "tuple", [(f"input {i}", value) for i, value in enumerate(inputs)]
    else:
        raise TypeError(
            f"assert_batch_invariant: inputs is a {type(inputs).__name__}; expected a tensor, "
            "a dict of tensors (passed as keyword arguments) or a tuple of tensors (passed "
            "as positional arguments)"
        )
    sizes = {
        name: _batch_size(name, value, batch_dim)
        for name, value in items
        if isinstance(value, torch.Tensor)
    }
    if not sizes:
        raise ValueError("assert_batch_invariant: inputs hold no tensor to split into samples")
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{name}: {size}" for name, size in sizes.items())
        raise ValueError(
            f"assert_batch_invariant: the inputs disagree on the batch size along dimension "
            f"{batch_dim} ({shown}); every tensor input must share the batch dimension"
        )
    mask = None
    if kind == "dict" and mask_key is not None and mask_key in inputs:
        mask = inputs[mask_key]
        if not isinstance(mask, torch.Tensor) or mask.dim() != batch_dim + 2:
            raise ValueError(
                f"assert_batch_invariant: {mask_key!r} must be a tensor with the batch "
                f"dimension {batch_dim} followed by one sequence dimension, got "
                f"{getattr(mask, 'shape', type(mask).__name__)}; pass mask_key=None to "
                "split it like any other input"
            )
    return _Batch(kind, inputs, next(iter(sizes.values())), mask)


def _sample(batch: _Batch, index: int, batch_dim: int) -> tuple[Any, Any | None]:
    """The inputs of sample ``index`` alone and, with a mask, its real positions."""
    import torch

    def row(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.narrow(batch_dim, index, 1)
        return value

    if batch.kind == "tensor":
        return row(batch.value), None
    if batch.kind == "tuple":
        return tuple(row(value) for value in batch.value), None
    if batch.mask is None:
        return {key: row(value) for key, value in batch.value.items()}, None
    mask_shape = tuple(batch.mask.shape)
    real = torch.nonzero(row(batch.mask).reshape(-1) != 0).reshape(-1)
    sample: dict[str, Any] = {}
    for key, value in batch.value.items():
        value = row(value)
        # Inputs laid out like the mask (input_ids, position_ids, inputs_embeds...) lose
        # the padded positions.
        if isinstance(value, torch.Tensor) and (
            tuple(batch.value[key].shape[: len(mask_shape)]) == mask_shape
        ):
            value = value.index_select(batch_dim + 1, real.to(value.device))
        sample[key] = value
    return sample, real


def _call(fn: Callable[..., Any], batch: _Batch, value: Any) -> Any:
    if batch.kind == "dict":
        return fn(**value)
    if batch.kind == "tuple":
        return fn(*value)
    return fn(value)


def _comparable(value: Any, what: str, advice: str) -> dict[str, Leaf]:
    """``flatten(value)``, its errors reworded for the helper the user called."""
    try:
        return flatten(value)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("golden_tensor: ")
        raise TypeError(f"{what} cannot be compared: {message} ({advice})") from exc


def _flatten_output(output: Any, what: str) -> dict[str, Leaf]:
    return _comparable(
        output,
        f"assert_batch_invariant: {what}",
        "return tensors or dicts / lists / tuples / dataclasses of them",
    )


def _row_of(
    leaf: Leaf, alone: Leaf, index: int, batch_dim: int, padded: int | None, real: Any | None
) -> tuple[Leaf, tuple[int, Any] | None]:
    """The sample's part of a batched output, and the dimension and padded positions it
    kept (or None).

    Positions are dropped along the dimension right after the batch dimension when it has
    the padded length in the batch and the sample's real length alone (logits, hidden
    states), else along a later one with those lengths where every other dimension agrees
    (a cache's ``[batch, heads, positions, head_dim]``): a feature dimension that happens
    to have the padded length keeps its size alone too.
    """
    data = np.take(leaf.data, [index], axis=batch_dim)
    kept = None
    if real is not None and len(real) != padded:
        seq_dim = _padded_dim(data.shape, alone.shape, batch_dim, padded, len(real))
        if seq_dim is not None:
            positions = real.cpu().numpy()
            data = np.take(data, positions, axis=seq_dim)
            kept = (seq_dim, positions)
    data = np.ascontiguousarray(data)
    return Leaf(dtype=leaf.dtype, shape=tuple(data.shape), data=data, device=leaf.device), kept


def _padded_dim(
    batched: tuple[int, ...], alone: tuple[int, ...], batch_dim: int, padded: int | None, real: int
) -> int | None:
    """The dimension of a sample's batched output that holds its padded positions."""

    def holds_positions(dim: int) -> bool:
        return len(alone) > dim and batched[dim] == padded and alone[dim] == real

    if len(batched) > batch_dim + 1 and holds_positions(batch_dim + 1):
        return batch_dim + 1
    if len(alone) != len(batched):
        return None
    for dim in range(batch_dim + 2, len(batched)):
        others = [d for d in range(len(batched)) if d != dim]
        if holds_positions(dim) and all(batched[d] == alone[d] for d in others):
            return dim
    return None


@dataclass
class _SampleResult:
    index: int
    problems: list[str]
    comparisons: dict[str, Comparison]


def _spot_text(
    spot: Spot, dtype: str, sample: int, kept: tuple[int, Any] | None, batch_dim: int
) -> str:
    """Where a difference is, in the sample's own output and in the batched output."""
    in_batch = list(spot.index)
    if len(in_batch) > batch_dim:
        in_batch[batch_dim] = sample
    if kept is not None and len(in_batch) > kept[0]:
        seq_dim, positions = kept
        in_batch[seq_dim] = int(positions[spot.index[seq_dim]])
    where = f"{format_index(spot.index)} alone / {format_index(tuple(in_batch))} in the batch"
    return format_spot(
        spot, dtype, actual="in the batch", golden="alone", golden_first=True, where=where
    )


def _describe_sample(
    result: _SampleResult, kept: dict[str, tuple[int, Any] | None], batch_dim: int
) -> list[str]:
    failing = {key: c for key, c in result.comparisons.items() if not c.passed}
    if not failing and not result.problems:
        return [f"  sample {result.index}: identical"]
    lines = [f"  sample {result.index}: DIFFERS"]
    lines += [f"    {problem}" for problem in result.problems]
    for key, c in failing.items():
        name = key or "(output)"
        if c.outcome != "mismatch":
            lines.append(
                f"    {name}: {c.outcome} differs: alone {c.golden_dtype}{list(c.golden_shape)}, "
                f"in the batch {c.actual_dtype}{list(c.actual_shape)}"
            )
            continue
        rule = c.tolerance.describe()
        lines.append(
            f"    {name}: {c.mismatched} of {c.total} elements differ ({rule}, {c.actual_dtype})"
        )
        where = kept.get(key)
        if c.max_abs is not None:
            lines.append(
                f"      largest absolute difference {c.max_abs.diff:.3g} "
                + _spot_text(c.max_abs, c.actual_dtype, result.index, where, batch_dim)
            )
        if c.max_rel is not None:
            lines.append(
                f"      largest relative difference {c.max_rel.diff:.3g} "
                + _spot_text(c.max_rel, c.actual_dtype, result.index, where, batch_dim)
            )
        if c.first_mismatch is not None:
            lines.append(
                "      first difference "
                + _spot_text(c.first_mismatch, c.actual_dtype, result.index, where, batch_dim)
            )
    return lines


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
    batch = _parse_inputs(inputs, batch_dim, mask_key)
    padded = None if batch.mask is None else int(batch.mask.shape[batch_dim + 1])
    batched = _flatten_output(_call(fn, batch, batch.value), "the batched output")
    splittable = {
        key: leaf
        for key, leaf in batched.items()
        if len(leaf.shape) > batch_dim and leaf.shape[batch_dim] == batch.size
    }
    if not splittable:
        raise ValueError(
            f"assert_batch_invariant: no output has the batch dimension {batch_dim} of size "
            f"{batch.size}, so no sample can be compared; return per-sample outputs"
        )
    results = []
    kept_per_sample = []
    for index in range(batch.size):
        sample_inputs, real = _sample(batch, index, batch_dim)
        alone = _flatten_output(_call(fn, batch, sample_inputs), f"the output of sample {index}")
        result = _SampleResult(index, [], {})
        kept: dict[str, tuple[int, Any] | None] = {}
        for key, leaf in splittable.items():
            if key not in alone:
                result.problems.append(f"{key or '(output)'}: missing from the output alone")
                continue
            row, kept[key] = _row_of(leaf, alone[key], index, batch_dim, padded, real)
            tolerance = resolve_tolerance(
                leaf.dtype, tolerance_overrides(), rtol=rtol, atol=atol, exact=exact
            )
            result.comparisons[key] = compare(row, alone[key], tolerance)
        results.append(result)
        kept_per_sample.append(kept)
    differing = [
        r for r in results if r.problems or any(not c.passed for c in r.comparisons.values())
    ]
    if not differing:
        return
    lines = [
        f"not batch invariant: {len(differing)} of {batch.size} samples differ when run alone "
        + ("without their padding " if batch.mask is not None else "")
        + "from their rows of the batched output"
    ]
    for result, kept in zip(results, kept_per_sample, strict=True):
        lines += _describe_sample(result, kept, batch_dim)
    skipped = sorted(set(batched) - set(splittable))
    if skipped:
        lines.append(f"  not compared (no batch dimension): {', '.join(skipped)}")
    raise AssertionError("\n".join(lines))
