"""What every check of the audit shares, and the checks ``mode``, ``repeatable``, ``seed``
and ``batch``; ``kernels`` is in :mod:`~pytest_determinism.audit.kernels`, the information
checks ``threads`` and ``precision`` in :mod:`~pytest_determinism.audit.information`.

Each check composes an engine the plugin uses inside tests (the run checker and its seed
probe, the batch-invariance engine, the drift kinds, the eval-mode switch's train-mode
message, torch's deterministic-algorithm errors explained), so an audit explains a problem
in the same words a failing test would. The checks run the model under ``torch.no_grad()``,
reseeded before every forward call, with the process's torch flags as found, except
``kernels``, which switches deterministic algorithms on as a marked test does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_determinism.golden.tolerances import EXACT
from pytest_determinism.golden.values import Leaf, flatten
from pytest_determinism.nondeterminism.batch import check_batch
from pytest_determinism.nondeterminism.runs import Verdict, check_runs
from pytest_determinism.state.evalmode import stochastic_layers, train_mode_message
from pytest_determinism.state.rng import seed_everything

__all__ = [
    "INFORMATION",
    "CheckResult",
    "CheckVerdict",
    "Subject",
    "batch",
    "call_model",
    "forward",
    "mode",
    "random_outputs",
    "repeatable",
    "seed",
    "seeded_leaves",
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


def forward(subject: Subject, model: Any = None, inputs: Any = None) -> Any:
    """One forward pass under ``torch.no_grad()``: the subject's model on its inputs, or
    ``model`` / ``inputs`` given instead."""
    import torch

    with torch.no_grad():
        return call_model(
            subject.model if model is None else model,
            subject.inputs if inputs is None else inputs,
        )


def seeded_leaves(subject: Subject, model: Any = None, inputs: Any = None) -> dict[str, Leaf]:
    """:func:`forward` after reseeding every RNG with the subject's seed, flattened."""
    seed_everything(subject.seed)
    return flatten(forward(subject, model, inputs))


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
    return lambda _index: flatten(forward(subject))


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
        return forward(subject, inputs=_as_given(subject.inputs, args, kwargs))

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
