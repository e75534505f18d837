"""The seven checks of the audit, each a :class:`CheckResult` with its verdict.

Each check composes an engine the plugin uses inside tests (the run checker and its seed
probe, the batch-invariance engine, the drift kinds, the eval-mode switch's train-mode
message, torch's deterministic-algorithm errors explained), so an audit explains a problem
in the same words a failing test would. The checks run the model under ``torch.no_grad()``,
reseeded before every forward call, with the process's torch flags as found, except
``kernels``, which switches deterministic algorithms on as a marked test does.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pytest_determinism.golden.compare import Comparison, compare_leaves
from pytest_determinism.golden.drift import format_ulps
from pytest_determinism.golden.tolerances import EXACT, default_tolerance
from pytest_determinism.golden.values import Leaf, flatten
from pytest_determinism.nondeterminism.batch import check_batch
from pytest_determinism.nondeterminism.ops import describe_where
from pytest_determinism.nondeterminism.runs import Verdict, check_runs
from pytest_determinism.nondeterminism.torch_errors import (
    explain_torch_error,
    nondeterministic_op,
)
from pytest_determinism.state import hooks
from pytest_determinism.state.evalmode import stochastic_layers, train_mode_message
from pytest_determinism.state.rng import seed_everything
from pytest_determinism.state.snapshot import apply_deterministic_settings, capture, restore

__all__ = [
    "INFORMATION",
    "CheckResult",
    "CheckVerdict",
    "Subject",
    "batch",
    "call_model",
    "kernels",
    "mode",
    "precision",
    "random_outputs",
    "repeatable",
    "seed",
    "threads",
]

#: A check's verdict: ``finding`` makes the exit status 1; ``info`` never does.
CheckVerdict = Literal["ok", "finding", "info", "skipped"]

#: The checks that only inform: they never make the exit status 1.
INFORMATION = ("threads", "precision")


@dataclass
class CheckResult:
    """What one check came to: its ``verdict``, a one-line ``summary``, ``details`` for the
    JSON file, and the full ``explanation`` under a finding (for information, what the
    difference means; empty otherwise)."""

    name: str
    verdict: CheckVerdict
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""


@dataclass
class Subject:
    """The model under audit, its inputs and the settings every check shares."""

    model: Any
    inputs: Any
    seed: int
    runs: int
    rootdir: str


def call_model(model: Any, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def _forward(subject: Subject, model: Any = None, inputs: Any = None) -> Any:
    import torch

    with torch.no_grad():
        return call_model(
            subject.model if model is None else model,
            subject.inputs if inputs is None else inputs,
        )


def _seeded_leaves(subject: Subject, model: Any = None, inputs: Any = None) -> dict[str, Leaf]:
    seed_everything(subject.seed)
    return flatten(_forward(subject, model, inputs))


# --------------------------------------------------------------------------------------
# 1. mode


def mode(subject: Subject) -> CheckResult:
    """The model as built: in training mode with stochastic layers is a finding (call this
    before the model is switched to eval mode)."""
    model = subject.model
    layers = stochastic_layers(model)
    details: dict[str, Any] = {
        "training": bool(model.training),
        "stochastic_layers": [{"name": n, "class": c, "kind": k} for n, c, k in layers],
    }
    if layers:
        name = type(model).__name__
        shown = ", ".join(f"{qual} ({cls})" for qual, cls, _ in layers[:3])
        more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
        return CheckResult(
            "mode",
            "finding",
            f"built in training mode with stochastic layers: {shown}{more}; call model.eval()",
            details,
            train_mode_message(model, name, layers).replace(
                " was called in training mode", " is in training mode as built", 1
            )
            + ". The audit ran the other checks in eval mode, as a marked test does.",
        )
    if model.training:
        summary = "built in training mode, but no layer acts differently there"
    else:
        summary = "built in eval mode"
    return CheckResult("mode", "ok", summary + "; the checks run in eval mode", details)


# --------------------------------------------------------------------------------------
# 2. repeatable, 3. seed


def _run_details(verdict: Verdict) -> dict[str, Any]:
    return {
        "runs_made": verdict.runs_made,
        "module": verdict.module,
        "class": verdict.module_class,
        "op": verdict.op,
        "line": verdict.line,
        "differences": [{"key": d.key, "detail": d.detail} for d in verdict.differences],
    }


def _where(verdict: Verdict) -> str:
    parts = []
    if verdict.module is not None:
        parts.append(f"first in {verdict.module} ({verdict.module_class})")
    if verdict.op is not None:
        parts.append(verdict.op)
    if verdict.line is not None:
        parts.append(verdict.line.split(": ", 1)[0])
    return f": {', '.join(parts)}" if parts else ""


def _evidence(subject: Subject) -> Callable[[int], Mapping[str, Leaf]]:
    return lambda _index: flatten(_forward(subject))


def repeatable(subject: Subject) -> CheckResult:
    """``--runs`` runs reseeded alike must give bitwise-identical outputs."""
    verdict = check_runs(
        _evidence(subject),
        runs=subject.runs,
        seed=subject.seed,
        stochastic=True,
        rootdir=subject.rootdir,
    )
    if verdict.ok:
        return CheckResult(
            "repeatable",
            "ok",
            f"{subject.runs} runs reseeded with seed {subject.seed} are bitwise identical",
            _run_details(verdict),
        )
    return CheckResult(
        "repeatable",
        "finding",
        f"run {verdict.diverging_run} differs from run 0, reseeded alike{_where(verdict)}",
        _run_details(verdict),
        verdict.message,
    )


def seed(subject: Subject, repeat: CheckResult) -> CheckResult:
    """The seed probe: forward-pass draws from another seed must change nothing."""
    if repeat.verdict == "finding":
        return CheckResult(
            "seed",
            "skipped",
            "not asked: runs reseeded alike already differ, so another seed's difference "
            "would say nothing more",
        )
    verdict = check_runs(
        _evidence(subject), runs=1, seed=subject.seed, stochastic=False, rootdir=subject.rootdir
    )
    if verdict.ok:
        return CheckResult(
            "seed",
            "ok",
            "draws from another seed inside forward calls change nothing",
            _run_details(verdict),
        )
    return CheckResult(
        "seed",
        "finding",
        f"the output depends on random draws inside forward calls{_where(verdict)}",
        _run_details(verdict),
        verdict.message,
    )


# --------------------------------------------------------------------------------------
# 4. kernels


@dataclass
class _Alert:
    op: str
    module: str | None
    module_class: str | None
    line: str | None
    explanation: str


class _ModuleStack:
    """The module calls now running, innermost last, by qualified name."""

    def __init__(self, model: Any) -> None:
        self.names = {id(sub): name or type(model).__name__ for name, sub in model.named_modules()}
        self.stack: list[Any] = []

    def pre(self, module: Any, args: Any) -> None:
        self.stack.append(module)

    def post(self, module: Any, *rest: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def innermost(self) -> tuple[str | None, str | None]:
        if not self.stack:
            return None, None
        module = self.stack[-1]
        return self.names.get(id(module), type(module).__name__), type(module).__name__


def _function_at(filename: str, lineno: int) -> str:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == filename and frame.f_lineno == lineno:
            return frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def kernels(subject: Subject) -> CheckResult:
    """The model under ``torch.use_deterministic_algorithms(True)``: ops without a
    deterministic implementation are named, with the module, the line and the choices."""
    alerts: dict[str, _Alert] = {}
    stack = _ModuleStack(subject.model)

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        op = nondeterministic_op(message)
        if op is None:
            # Not torch's alert: shown as it would have been.
            shown(message, category, filename, lineno, file, line)
            return
        if op in alerts:
            return
        module, cls = stack.innermost()
        where = (filename, lineno, _function_at(filename, lineno))
        alerts[op] = _Alert(
            op,
            module,
            cls,
            describe_where(where, subject.rootdir),
            explain_torch_error(RuntimeError(str(message))) or "",
        )

    shown = warnings.showwarning
    baseline = capture()
    error: BaseException | None = None
    hooks.subscribe(pre=stack.pre, post=stack.post)
    try:
        # warn_only: every such op is named, not only the first one torch would refuse.
        apply_deterministic_settings(warn_only=True, tf32=False, threads=None, baseline=baseline)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            seed_everything(subject.seed)
            try:
                _forward(subject)
            except Exception as exc:
                error = exc
    finally:
        hooks.unsubscribe(pre=stack.pre, post=stack.post)
        restore(baseline)
    details: dict[str, Any] = {
        "ops": [
            {"op": a.op, "module": a.module, "class": a.module_class, "line": a.line}
            for a in alerts.values()
        ]
    }
    if error is not None:
        details["error"] = f"{type(error).__name__}: {error}"
        explanation = explain_torch_error(error) or ""
        return CheckResult(
            "kernels",
            "finding",
            f"raised under deterministic algorithms: {type(error).__name__}: "
            + str(error).split("\n", 1)[0][:120],
            details,
            f"{type(error).__name__}: {error}\n{explanation}".rstrip(),
        )
    if not alerts:
        return CheckResult(
            "kernels", "ok", "runs under torch.use_deterministic_algorithms(True)", details
        )
    lines = []
    for alert in alerts.values():
        lines.append(f"op: {alert.op}")
        if alert.module is not None:
            lines.append(f"  module: {alert.module} ({alert.module_class})")
        if alert.line is not None:
            lines.append(f"  line: {alert.line}")
        lines.append("  " + alert.explanation.replace("\n", "\n  "))
    ops = ", ".join(alerts)
    return CheckResult(
        "kernels",
        "finding",
        f"no deterministic implementation: {ops}",
        details,
        "\n".join(lines),
    )


# --------------------------------------------------------------------------------------
# 5. batch

_BATCH_CAUSE = (
    "likely cause: a different batch size (and padding) makes kernels split their work "
    "and add up their sums in another order, so a sample's output changes by a few units "
    "in the last place (rounding); larger differences mean samples interact (batch "
    "statistics, an attention mask not applied, positions shifted by left padding).\n"
    "fix: to serve one request at a time and in batches alike, fix the batch size and "
    "padding, or use batch-invariant kernels; in tests, compare with a tolerance: "
    "assert_batch_invariant(fn, inputs, exact=False)"
)


def _as_given(inputs: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The inputs of one call back in the form the model takes them (see :func:`call_model`)."""
    if isinstance(inputs, Mapping):
        return kwargs
    if isinstance(inputs, tuple | list):
        return args
    return args[0]


def _padded(inputs: Any) -> bool:
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return bool(mask is not None and hasattr(mask, "all") and not mask.all())


def random_outputs(name: str, earlier: Sequence[CheckResult]) -> CheckResult | None:
    """``batch``, ``threads`` and ``precision`` compare two ways of computing one output;
    where runs already differ reseeded alike, any such difference would be that randomness
    again: the check is skipped, saying so (``None`` otherwise). A seed-dependent output
    skips ``batch`` alone: reseeded runs draw alike at one thread or in bfloat16, but a
    sample alone draws other numbers than its row of the batch."""
    asked = ("repeatable", "seed") if name == "batch" else ("repeatable",)
    random = [f.name for f in earlier if f.name in asked and f.verdict == "finding"]
    if not random:
        return None
    return CheckResult(
        name,
        "skipped",
        f"not asked: the outputs already change from run to run ({random[0]}), so any "
        "difference here would be that again",
    )


def batch(subject: Subject) -> CheckResult:
    """Each sample alone against its row of the batched output, bitwise (alone without its
    padding when the inputs hold an attention mask with padding)."""

    def one_call(*args: Any, **kwargs: Any) -> Any:
        # Every call starts from the seed, as every run does.
        seed_everything(subject.seed)
        return _forward(subject, inputs=_as_given(subject.inputs, args, kwargs))

    try:
        report = check_batch(
            one_call,
            subject.inputs,
            tolerance_for=lambda _dtype: EXACT,
            who="batch",
        )
    except (TypeError, ValueError) as exc:
        return CheckResult("batch", "skipped", str(exc).removeprefix("batch: "))
    if report.size < 2:
        return CheckResult(
            "batch",
            "skipped",
            "the inputs hold one sample; return inputs with two or more to check batch invariance",
            {"size": report.size},
        )
    details: dict[str, Any] = {
        "size": report.size,
        "masked": report.masked,
        "samples": [
            {
                "index": s.index,
                "identical": s.identical,
                "max_abs_diff": s.max_abs_diff,
                "max_rel_diff": s.max_rel_diff,
                "kind": s.kind,
            }
            for s in report.samples
        ],
        "not_compared": list(report.not_compared),
    }
    alone = "alone without its padding" if _padded(subject.inputs) else "alone"
    if report.ok:
        return CheckResult(
            "batch",
            "ok",
            f"{report.size} samples: each {alone} equals its row of the batch, bitwise",
            details,
        )
    differing = [s for s in report.samples if not s.identical]
    shown = ", ".join(
        f"sample {s.index}"
        + (
            f" (max abs diff {s.max_abs_diff:.3g}{f', {s.kind}' if s.kind else ''})"
            if s.max_abs_diff is not None
            else ""
        )
        for s in differing[:3]
    )
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    return CheckResult(
        "batch",
        "finding",
        f"{len(differing)} of {report.size} samples differ {alone} from their rows of the "
        f"batch: {shown}{more}",
        details,
        f"{report.message}\n{_BATCH_CAUSE}",
    )


# --------------------------------------------------------------------------------------
# 6. threads, 7. precision (information)


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
    many = _seeded_leaves(subject)
    torch.set_num_threads(1)
    try:
        one = _seeded_leaves(subject)
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
    reference = _seeded_leaves(subject)
    try:
        lowered = _seeded_leaves(subject, low, low_inputs)
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
    kind = comparison.drift.kind if comparison.drift is not None else "difference"
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
