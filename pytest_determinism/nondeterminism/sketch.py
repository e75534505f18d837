"""Sketches: a fixed-size summary of a floating tensor from which the relative difference
to another run's tensor of the same shape can be estimated.

A sketch holds :data:`SAMPLES` elements at fixed, evenly spaced positions of the flattened
tensor (their exact bits) and the tensor's L2 norm, summed in float64 in a fixed order, so
the same tensor gives the same sketch on any machine and thread count (an unchanged golden
stays byte-identical). Two sketches of tensors of one shape
sample the same positions, so the estimate of their relative difference is the larger of

- the largest difference among the samples, relative to the golden tensor's scale (the
  larger of its largest sampled magnitude and its root mean square), and
- the relative difference of the norms, which sees a change anywhere in the tensor.

A difference confined to a few elements that no sample hits and too small to move the
norm is underestimated; a dense one (what a changed weight, op or dtype makes) is not. The
digest beside the sketch still says whether the bits differ at all.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from pytest_determinism.golden.drift import Drift, DriftTally
from pytest_determinism.golden.dtypes import DTYPES, decode
from pytest_determinism.golden.golden_trace import TracedOutput

__all__ = ["SAMPLES", "drift_of", "relative_difference", "sample_values", "take_sketch"]

#: Elements sampled per tensor.
SAMPLES = 16

# Elements squared at a time for the norm (512 KiB of float64).
_NORM_CHUNK = 1 << 16


def take_sketch(torch: Any, tensor: Any) -> tuple[bytes, float | None]:
    """The samples (raw bits) and the norm (``None`` where not finite) of a floating
    tensor."""
    flat = tensor.detach().reshape(-1)
    count = flat.numel()
    if count == 0:
        return b"", 0.0
    native = flat.dtype in (torch.float32, torch.float64) and type(flat) is torch.Tensor
    if flat.is_cpu:
        # NumPy on the tensor's own memory: a fraction of the cost of torch's dispatch, and
        # this runs for every output of every module call while recording.
        values = (flat if native else flat.float()).numpy()
        raw = values[_positions(count)].tobytes() if native else _raw_sample(torch, flat, count)
        norm = _norm(values)
    else:
        raw = _raw_sample(torch, flat, count)
        norm = float(torch.linalg.vector_norm(flat.double()))
    return raw, norm if math.isfinite(norm) else None


def _raw_sample(torch: Any, flat: Any, count: int) -> bytes:
    positions = torch.from_numpy(_positions(count)).to(flat.device)
    return bytes(flat[positions].cpu().view(torch.uint8).numpy().tobytes())


def _norm(values: np.ndarray[Any, Any]) -> float:
    """The L2 norm, summed in float64 chunk by chunk: the same bits on every machine and
    thread count (a BLAS dot splits long vectors across threads), with a bounded
    temporary."""
    total = 0.0
    for start in range(0, values.size, _NORM_CHUNK):
        chunk = values[start : start + _NORM_CHUNK]
        total += float(np.square(chunk, dtype=np.float64).sum())
    return math.sqrt(total)


@functools.lru_cache(maxsize=1024)
def _positions(count: int) -> np.ndarray[Any, Any]:
    """The sampled positions in a tensor of ``count`` elements (a model's tensors come in
    few sizes)."""
    return np.linspace(0, count - 1, min(SAMPLES, count)).round().astype(np.int64)


def sample_values(output: TracedOutput) -> np.ndarray[Any, Any]:
    """The sampled elements of ``output`` as float64 values."""
    info = DTYPES[output.dtype]
    bits = np.frombuffer(output.samples or b"", dtype=info.storage)
    return np.asarray(decode(output.dtype, bits), dtype=np.float64)


def relative_difference(actual: TracedOutput, golden: TracedOutput) -> float:
    """Estimated relative difference of ``actual`` from ``golden``: ``0.0`` where their
    bits are equal, ``inf`` where they cannot be compared (another dtype or shape, no
    sketch, NaN or infinity appeared or went away)."""
    if actual.digest == golden.digest and actual.dtype == golden.dtype:
        return 0.0
    if (
        actual.dtype != golden.dtype
        or actual.shape != golden.shape
        or actual.samples is None
        or golden.samples is None
        or len(actual.samples) != len(golden.samples)
    ):
        return math.inf
    a, g = sample_values(actual), sample_values(golden)
    finite_a, finite_g = np.isfinite(a), np.isfinite(g)
    if not np.array_equal(finite_a, finite_g) or not np.array_equal(
        a[~finite_g], g[~finite_g], equal_nan=True
    ):
        return math.inf
    if (actual.norm is None) != (golden.norm is None):
        return math.inf
    count = math.prod(golden.shape) or 1
    rms = (golden.norm or 0.0) / math.sqrt(count)
    scale = max(float(np.max(np.abs(g[finite_g]), initial=0.0)), rms)
    diff = float(np.max(np.abs(a[finite_a] - g[finite_g]), initial=0.0))
    norms = 0.0
    if actual.norm is not None and golden.norm is not None and golden.norm > 0:
        norms = abs(actual.norm - golden.norm) / golden.norm
    if scale == 0.0:
        return math.inf if diff or (actual.norm or 0.0) else 0.0
    # Bits differ but neither measure sees it: a change among elements no sample hits and
    # too small for the norm; the smallest positive figure keeps it apart from equality.
    return max(diff / scale, norms) or math.ulp(0.0)


def drift_of(actual: TracedOutput, golden: TracedOutput) -> Drift | None:
    """The drift kind the sampled elements show, or ``None`` where they cannot tell (no
    comparable samples, or a dtype without one)."""
    if (
        actual.samples is None
        or golden.samples is None
        or actual.dtype != golden.dtype
        or len(actual.samples) != len(golden.samples)
        or DTYPES[golden.dtype].kind != "float"
    ):
        return None
    a, g = sample_values(actual), sample_values(golden)
    finite = np.isfinite(a) & np.isfinite(g)
    nonfinite = int(np.count_nonzero(np.isfinite(a) != np.isfinite(g)))
    magnitude = float(np.max(np.abs(g[finite]), initial=0.0))
    tally = DriftTally(golden.dtype)
    compute = np.float64 if golden.dtype == "float64" else np.float32
    tally.add(a[finite].astype(compute), g[finite].astype(compute), magnitude)
    diff = float(np.max(np.abs(a[finite] - g[finite]), initial=0.0))
    return tally.result(diff, nonfinite)
