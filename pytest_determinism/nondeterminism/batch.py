"""Batch invariance: each sample run alone against its row of the batched output.

:func:`check_batch` is the engine behind ``assert_batch_invariant`` and the audit's
``batch`` check. It knows nothing of pytest and raises nothing for a difference: it returns
a :class:`BatchReport` whose ``message`` says, per sample, whether it differs, the largest
absolute and relative differences and the first differing position.

With an attention mask, each sample runs alone *without its padding*: the positions where
its mask is 0 are dropped from every input laid out like the mask, and of each batched
output only the sample's real positions are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_determinism.golden.compare import Comparison, Spot, compare
from pytest_determinism.golden.mismatch import format_index, format_spot
from pytest_determinism.golden.tolerances import Tolerance
from pytest_determinism.golden.values import Leaf, flatten

__all__ = ["BatchReport", "SampleOutcome", "check_batch"]


@dataclass(frozen=True)
class _Batch:
    """The inputs of a batch-invariance check, split by sample."""

    kind: str  # "tensor", "dict" or "tuple"
    value: Any
    size: int
    mask: Any | None  # the mask tensor, for a dict holding mask_key


def _batch_size(name: str, tensor: Any, batch_dim: int, who: str) -> int:
    if tensor.dim() <= batch_dim:
        raise ValueError(
            f"{who}: {name} has shape {tuple(tensor.shape)}, with no "
            f"dimension {batch_dim} to split into samples; pass batch_dim= or leave it out "
            "of the inputs"
        )
    return int(tensor.shape[batch_dim])


def _parse_inputs(inputs: Any, batch_dim: int, mask_key: str | None, who: str) -> _Batch:
    import torch

    if isinstance(inputs, torch.Tensor):
        return _Batch("tensor", inputs, _batch_size("the input", inputs, batch_dim, who), None)
    if isinstance(inputs, Mapping):
        kind, items = "dict", [(str(key), value) for key, value in inputs.items()]
    elif isinstance(inputs, tuple | list):
        kind, items = "tuple", [(f"input {i}", value) for i, value in enumerate(inputs)]
    else:
        raise TypeError(
            f"{who}: inputs is a {type(inputs).__name__}; expected a tensor, "
            "a dict of tensors (passed as keyword arguments) or a tuple of tensors (passed "
            "as positional arguments)"
        )
    sizes = {
        name: _batch_size(name, value, batch_dim, who)
        for name, value in items
        if isinstance(value, torch.Tensor)
    }
    if not sizes:
        raise ValueError(f"{who}: inputs hold no tensor to split into samples")
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{name}: {size}" for name, size in sizes.items())
        raise ValueError(
            f"{who}: the inputs disagree on the batch size along dimension "
            f"{batch_dim} ({shown}); every tensor input must share the batch dimension"
        )
    mask = None
    if kind == "dict" and mask_key is not None and mask_key in inputs:
        mask = inputs[mask_key]
        if not isinstance(mask, torch.Tensor) or mask.dim() != batch_dim + 2:
            raise ValueError(
                f"{who}: {mask_key!r} must be a tensor with the batch "
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


def _flatten_output(output: Any, what: str, who: str) -> dict[str, Leaf]:
    """``flatten(output)``, its errors reworded for the caller ``who``."""
    try:
        return flatten(output)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("golden_tensor: ")
        raise TypeError(
            f"{who}: {what} cannot be compared: {message} (return tensors or dicts / lists / "
            "tuples / dataclasses of them)"
        ) from exc


@dataclass(frozen=True)
class SampleOutcome:
    """One sample alone against its row of the batched output.

    ``identical`` is true when every compared output matched; ``max_abs_diff`` and
    ``max_rel_diff`` are the largest differences over its outputs (``None`` when none
    differs in value), ``kind`` the drift kind of the largest one, when known.
    """

    index: int
    identical: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    kind: str | None = None


@dataclass(frozen=True)
class BatchReport:
    """What :func:`check_batch` found: ``size`` samples, each with its :class:`SampleOutcome`;
    ``masked`` when they ran alone without their padding; ``message`` the per-sample report
    (empty when every sample matched); ``not_compared`` the outputs without the batch
    dimension."""

    size: int
    masked: bool
    samples: tuple[SampleOutcome, ...]
    message: str
    not_compared: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether every sample alone matched its row of the batched output."""
        return all(sample.identical for sample in self.samples)


def _outcome(result: _SampleResult) -> SampleOutcome:
    failing = [c for c in result.comparisons.values() if not c.passed]
    if not failing and not result.problems:
        return SampleOutcome(result.index, identical=True)
    valued = [c for c in failing if c.max_abs_diff is not None]
    if not valued:
        return SampleOutcome(result.index, identical=False)
    worst = max(valued, key=lambda c: c.max_abs_diff or 0.0)
    rel = [c.max_rel_diff for c in valued if c.max_rel_diff is not None]
    return SampleOutcome(
        result.index,
        identical=False,
        max_abs_diff=worst.max_abs_diff,
        max_rel_diff=max(rel) if rel else None,
        kind=None if worst.drift is None else worst.drift.kind,
    )


def check_batch(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    tolerance_for: Callable[[str], Tolerance],
    batch_dim: int = 0,
    mask_key: str | None = "attention_mask",
    who: str = "check_batch",
) -> BatchReport:
    """Run ``fn`` on the whole batch and on every sample alone; compare each sample's output
    with its row of the batched output under ``tolerance_for(dtype)``.

    ``inputs`` is a tensor, a dict of tensors (``fn(**inputs)``) or a tuple of tensors
    (``fn(*inputs)``) sharing the batch dimension ``batch_dim``. A dict holding
    ``mask_key`` runs each sample without its padding (see the module's docstring). Bad
    inputs raise ``TypeError`` / ``ValueError`` starting with ``who``; what ``fn`` raises
    propagates.
    """
    batch = _parse_inputs(inputs, batch_dim, mask_key, who)
    padded = None if batch.mask is None else int(batch.mask.shape[batch_dim + 1])
    batched = _flatten_output(_call(fn, batch, batch.value), "the batched output", who)
    splittable = {
        key: leaf
        for key, leaf in batched.items()
        if len(leaf.shape) > batch_dim and leaf.shape[batch_dim] == batch.size
    }
    if not splittable:
        raise ValueError(
            f"{who}: no output has the batch dimension {batch_dim} of size "
            f"{batch.size}, so no sample can be compared; return per-sample outputs"
        )
    results = []
    kept_per_sample = []
    for index in range(batch.size):
        sample_inputs, real = _sample(batch, index, batch_dim)
        alone = _flatten_output(
            _call(fn, batch, sample_inputs), f"the output of sample {index}", who
        )
        result = _SampleResult(index, [], {})
        kept: dict[str, tuple[int, Any] | None] = {}
        for key, leaf in splittable.items():
            if key not in alone:
                result.problems.append(f"{key or '(output)'}: missing from the output alone")
                continue
            row, kept[key] = _row_of(leaf, alone[key], index, batch_dim, padded, real)
            result.comparisons[key] = compare(row, alone[key], tolerance_for(leaf.dtype))
        results.append(result)
        kept_per_sample.append(kept)
    skipped = tuple(sorted(set(batched) - set(splittable)))
    samples = tuple(_outcome(result) for result in results)
    differing = [sample for sample in samples if not sample.identical]
    if not differing:
        return BatchReport(batch.size, batch.mask is not None, samples, "", skipped)
    lines = [
        f"not batch invariant: {len(differing)} of {batch.size} samples differ when run alone "
        + ("without their padding " if batch.mask is not None else "")
        + "from their rows of the batched output"
    ]
    for result, kept in zip(results, kept_per_sample, strict=True):
        lines += _describe_sample(result, kept, batch_dim)
    if skipped:
        lines.append(f"  not compared (no batch dimension): {', '.join(skipped)}")
    return BatchReport(batch.size, batch.mask is not None, samples, "\n".join(lines), skipped)
