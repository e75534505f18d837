"""The audit's ``kernels`` check: the model under ``torch.use_deterministic_algorithms``.

torch is switched to deterministic algorithms as a marked test switches it, with
``warn_only`` so that every op without a deterministic implementation is named, not only
the first one torch would refuse; each comes with the module it ran in, the line that
called it and the choices torch's refusal is explained with in tests.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any

from pytest_determinism.audit.checks import CheckResult, Subject, forward
from pytest_determinism.nondeterminism.ops import describe_where
from pytest_determinism.nondeterminism.torch_errors import (
    explain_torch_error,
    nondeterministic_op,
)
from pytest_determinism.state import hooks
from pytest_determinism.state.rng import seed_everything
from pytest_determinism.state.snapshot import apply_deterministic_settings, capture, restore

__all__ = ["kernels"]


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
                forward(subject)
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
