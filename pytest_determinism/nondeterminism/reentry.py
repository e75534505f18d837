"""A later run that failed where run 0 passed, without any module behaving differently.

Under ``--determinism`` the runs of a test body share its function-scoped fixtures: they are
set up once, before run 0. A body that changes them (``monkeypatch.setattr`` guarded by
``assert not hasattr(...)``, appending to a file under ``tmp_path``) finds run 0's change in
run 1 and fails there. Reporting that as randomness would send the engineer hunting for an
unseeded generator that does not exist, so :func:`not_reentrant_message` recognises the
case from the verdict and says what happened instead. The caller passes the names of the
fixtures: this module knows nothing of pytest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.runs import Verdict

__all__ = ["is_not_reentrant", "not_reentrant_message"]


def is_not_reentrant(verdict: Verdict) -> bool:
    """Whether the diverging run raised where run 0 returned normally, after the same module
    calls as run 0 with identical outputs (or no module calls seen at all)."""
    if verdict.ok or len(verdict.errors) < 2:
        return False
    if verdict.errors[0] is not None or verdict.errors[-1] is None:
        return False
    return verdict.diagnosis is None or verdict.diagnosis.calls_agree


def _error_lines(error: BaseException) -> list[str]:
    # Rewritten asserts explain themselves over several lines: keep them, indented.
    first, *rest = f"{type(error).__name__}: {error}".splitlines() or [type(error).__name__]
    return [first, *(f"    {line}" for line in rest)]


# What a well-known fixture carries from one run to the next, and how a body avoids it.
_CARRIES = {
    "monkeypatch": "an attribute, item or environment variable set and not undone",
    "tmp_path": "a file written or appended to",
    "tmpdir": "a file written or appended to",
    "recwarn": "the warnings already recorded",
    "capsys": "the output already captured",
    "capfd": "the output already captured",
    "caplog": "the log records already captured",
}
_FIXES = {
    "monkeypatch": "undo the body's patches before it ends (`with monkeypatch.context() as mp:`)",
    "tmp_path": "write files afresh instead of appending or expecting them absent (or use a "
    "new folder per run, tmp_path_factory.mktemp)",
    "recwarn": "clear what was recorded first (recwarn.clear())",
    "capsys": "read what was captured first (capsys.readouterr())",
    "capfd": "read what was captured first (capfd.readouterr())",
    "caplog": "clear the records first (caplog.clear())",
}
_FIXES["tmpdir"] = _FIXES["tmp_path"]


def _carried(fixtures: Sequence[str]) -> str:
    known = dict.fromkeys(_CARRIES[name] for name in fixtures if name in _CARRIES)
    if len(known) < len(fixtures):
        known["an object the body changed in place"] = None
    return "; ".join(known)


def _fixes(fixtures: Sequence[str]) -> str:
    if not fixtures:
        return "put back what the body changes before it ends"
    known = [_FIXES[name] for name in dict.fromkeys(fixtures) if name in _FIXES]
    if len(known) < len(fixtures):
        known.append("change a copy of a fixture's value rather than the value itself")
    return ", ".join(dict.fromkeys(known))


def not_reentrant_message(
    verdict: Verdict, fixtures: Sequence[str], *, seed: int, where: str | None = None
) -> str:
    """The failure message for a verdict :func:`is_not_reentrant` accepts.

    ``fixtures`` names the function-scoped fixtures the test uses (the likely carriers of run
    0's changes); ``where`` is the place in the test's file that raised, if known.
    """
    index = verdict.diverging_run
    probe = verdict.kind == "seed"
    name = "the probe run" if probe else f"run {index}"
    error = verdict.errors[-1]
    if error is None:
        raise ValueError("not_reentrant_message: the verdict's last run raised nothing")
    first, *rest = _error_lines(error)
    seen = (
        "after the same module calls as run 0, with identical outputs"
        if verdict.diagnosis is not None
        else "and made again with module recording on, the runs agreed in every module call"
    )
    lines = [
        f"Not re-entrant: {name} failed where run 0 passed, {seen} (runs reseeded with seed "
        f"{seed} before each; {verdict.runs_made} runs made).",
        "  run 0 returned normally",
        f"  {name} raised {first}",
        *rest,
    ]
    if where is not None:
        lines.append(f"    (raised at {where})")
    if fixtures:
        carriers = (
            f"This test uses the function-scoped fixture{'s' if len(fixtures) > 1 else ''} "
            f"{', '.join(fixtures)}: the likely carrier{'s' if len(fixtures) > 1 else ''} of "
            f"run 0's changes ({_carried(fixtures)})."
        )
    else:
        carriers = (
            "This test uses no function-scoped fixture, so the change was carried by state "
            "that outlives a run: a module-level variable, a class attribute, a file at a "
            "fixed path or an environment variable."
        )
    lines += [
        "  likely cause: the test body is not re-entrant",
        "  why: under --determinism the body runs several times in a row, while the test's "
        "function-scoped fixtures are set up once, before run 0, so whatever run 0 changed "
        f"through them is still there when {name} starts. {carriers} Nothing differed in "
        "the model before the failure.",
        f"  fix: make each run start from what the fixtures gave: {_fixes(fixtures)}; or move "
        "the change into a fixture, which is set up once for all runs, so that the body only "
        "uses it",
    ]
    return "\n".join(lines)
