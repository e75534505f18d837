"""The ``golden_tensor`` object: ``check``, recording, and per-run evidence for the CI mode.

One object per test, one golden file per test. ``check`` flattens a value into leaves and
either compares them with the file (streaming, memory-mapped) or, under
``--update-golden``, hands them to a :class:`~pytest_determinism.golden.writing.GoldenWriter`
(big ones go to a temporary file at once), installed when the test has passed. In the CI mode
the plugin calls ``start_run`` before each run of the body: run 0 behaves as above, later
runs only capture what was checked, and ``evidence`` hands each run's leaves to the
engine, which compares the runs bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from pytest_determinism.errors import GoldenFileError
from pytest_determinism.golden.compare import compare_leaves
from pytest_determinism.golden.environment import environment_metadata
from pytest_determinism.golden.golden_trace import TRACE_KEY, GoldenTrace, stored_trace
from pytest_determinism.golden.mismatch import mismatch_message, update_command
from pytest_determinism.golden.result import GoldenResult, key_entry
from pytest_determinism.golden.storage import (
    CHECKS_KEY,
    METADATA_KEY,
    GoldenFile,
    GoldenFormatError,
    encode_checks,
    read_golden,
)
from pytest_determinism.golden.tolerances import Tolerance, resolve_tolerance
from pytest_determinism.golden.values import Leaf, bits_equal, flatten
from pytest_determinism.golden.writing import GoldenWriter

__all__ = ["GoldenTensor"]


class _Comparison(NamedTuple):
    """One check's values and how to compare them with the golden."""

    name: str
    leaves: dict[str, Leaf]
    rtol: float | None
    atol: float | None
    exact: bool
    equal_nan: bool


class GoldenTensor:
    """Compare a test's outputs with its golden file, or record them.

    ``path`` is the test's golden file and ``root`` the golden root it must lie in;
    ``test_id`` the node id (recorded, and quoted in the command that re-records);
    ``update`` records instead of comparing; ``tolerances`` overrides the default table
    per dtype; ``seed`` is recorded in the metadata; with ``defer_failures`` a mismatch
    of run 0 is kept in :attr:`pending_failure` instead of raised.
    """

    def __init__(
        self,
        *,
        path: Path,
        root: Path,
        test_id: str,
        update: bool,
        tolerances: Mapping[str, Tolerance],
        seed: int | None,
        defer_failures: bool,
        command_id: str | None = None,
    ) -> None:
        path, root = Path(path), Path(root)
        if not path.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"golden file {path} lies outside the golden root {root}")
        self.path = path
        self.root = root
        self.test_id = test_id
        #: The test as the user's shell names it, for the command that re-records it.
        self.command_id = command_id or test_id
        self.update = update
        self.tolerances = dict(tolerances)
        self.seed = seed
        self.defer_failures = defer_failures
        #: Run 0's golden mismatch, when ``defer_failures``; ``None`` otherwise.
        self.pending_failure: str | None = None
        self._run = 0
        self._capturing = False
        self._counter = 0
        self._names: dict[str, list[str]] = {}
        self._keys: set[str] = set()
        self._evidence: dict[int, dict[str, Leaf]] = {}
        # CI mode: run 0's checks, compared with the golden once every run is made.
        self._waiting: list[_Comparison] = []
        # Under --update-golden: each check name and its keys, in order; the writer holds
        # their values.
        self._recorded: dict[str, list[str]] = {}
        self._writer = GoldenWriter(path)
        self._write_failed = False
        self._file: GoldenFile | None = None
        self._file_error: GoldenFileError | None = None
        self._passed = 0
        self._failed = 0
        self._entries: list[dict[str, Any]] = []
        #: Whether a check's values differed from the golden (not a missing file or name).
        self.values_differ = False
        # Under --update-golden: the golden trace recorded for this test, as stored.
        self._trace_text: str | None = None

    def __repr__(self) -> str:
        mode = "recording" if self.update else "comparing"
        return f"<golden_tensor {mode} {self.test_id} in {self.path}>"

    # -- the CI mode -----------------------------------------------------------------

    def start_run(self, index: int) -> None:
        """Begin run ``index`` of the CI mode: unnamed checks count from ``0`` again;
        run 0 records, or compares at :meth:`compare_run_zero`; later runs only capture
        their evidence."""
        self._run = index
        self._capturing = True
        self._counter = 0
        self._names = {}
        self._keys = set()
        self._evidence[index] = {}

    @property
    def run_index(self) -> int:
        """The run now being made (``0`` outside the CI mode)."""
        return self._run

    def evidence(self, index: int) -> dict[str, Leaf]:
        """What run ``index`` checked, keyed ``"name"`` or ``"name.key"`` (CI mode only:
        leaves are kept from :meth:`start_run` on)."""
        return dict(self._evidence.get(index, {}))

    # -- the golden trace ----------------------------------------------------------------

    def keep_trace(self, text: str | None) -> None:
        """Under ``--update-golden``: the encoded golden trace to write with the values
        (``None``: none)."""
        self._trace_text = text

    def recorded_trace(self) -> GoldenTrace | None:
        """The golden trace the golden file holds, or ``None`` (no file, or an old one
        without a trace). A trace that cannot be read is a
        :class:`~pytest_determinism.errors.GoldenFileError` naming the file."""
        try:
            golden = self._golden()
        except GoldenFileError:
            return None
        try:
            return stored_trace(golden.metadata)
        except ValueError as exc:
            raise GoldenFileError(
                f"the golden trace in {self.path} cannot be read: {exc}.\n"
                f"  Re-record it: {update_command(self.command_id)}"
            ) from None

    # -- checking --------------------------------------------------------------------

    def check(
        self,
        value: object,
        name: str | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        exact: bool = False,
        equal_nan: bool = True,
        exclude: str | Sequence[str] | None = None,
    ) -> None:
        """Compare ``value`` with its golden, or record it under ``--update-golden``.

        ``value``: a tensor, array, number, or a nested dict / list / tuple / dataclass /
        named tuple of them, Hugging Face cache objects included (``None`` fields are left
        out). ``name``: the key in the golden file, unique within the test; unnamed checks
        are ``0``, ``1``, ... in order. ``rtol`` / ``atol`` override the dtype's default
        (one alone takes the other from the table); ``exact`` asks for equal bits;
        ``equal_nan`` lets NaN match NaN. ``exclude``: a key path relative to ``value``
        (``"cache"``, a prefix on whole components) or an ``fnmatch`` pattern
        (``"*.attentions"``), or a list of them, left out of recording, comparing and the
        CI mode's evidence alike; one that matches nothing is a ``ValueError``. Raises
        ``AssertionError`` on a mismatch and
        :class:`~pytest_determinism.errors.GoldenFileError` when the golden is missing.
        """
        __tracebackhide__ = True
        name = self._claim_name(name)
        # Bad tolerances fail the same way whether the check compares or records.
        resolve_tolerance("float32", rtol=rtol, atol=atol)
        try:
            # Recording needs no copy here: the writer keeps what it needs at once, and a
            # later run's leaves are copied only where they differ from run 0's. An empty
            # exclude still lets error messages offer exclude= as the way out.
            leaves = flatten(
                value,
                copy=self._capturing and self._run == 0,
                prefix=name,
                exclude=() if exclude is None else exclude,
            )
        except (TypeError, ValueError) as exc:
            # Raised afresh here, so the traceback ends in the test, not in the plugin.
            raise type(exc)(str(exc)) from None
        clash = next((key for key in leaves if key in self._keys), None)
        if clash is not None:
            raise ValueError(
                f"golden_tensor.check: the key {clash!r} of {name!r} clashes with a key "
                "of an earlier check in this test; rename one of them"
            )
        self._names[name] = list(leaves)
        self._keys.update(leaves)
        if self._capturing:
            self._evidence[self._run].update(self._kept(leaves) if self._run else leaves)
        if self._run > 0:
            return
        if self.update:
            self._record(name, leaves)
            return
        comparison = _Comparison(name, leaves, rtol, atol, exact, equal_nan)
        if self._capturing:
            # The CI mode compares run 0 with the golden once every run is made
            # (compare_run_zero): the runs follow one another with no golden read between.
            self._waiting.append(comparison)
            return
        self._judge(comparison)

    def compare_run_zero(self) -> None:
        """CI mode, once every run is made: compare run 0's checks with the golden, in the
        order they were made, keeping a mismatch in :attr:`pending_failure`."""
        waiting, self._waiting = self._waiting, []
        for comparison in waiting:
            self._judge(comparison)

    def _judge(self, comparison: _Comparison) -> None:
        __tracebackhide__ = True
        name, leaves, rtol, atol, exact, equal_nan = comparison
        try:
            message = self._compare(
                name, leaves, rtol=rtol, atol=atol, exact=exact, equal_nan=equal_nan
            )
        except GoldenFileError:
            self._failed += 1
            raise
        if message is None:
            self._passed += 1
            return
        self._failed += 1
        if self.defer_failures:
            # A missing file gives the same message for every check: say it once.
            if self.pending_failure is None:
                self.pending_failure = message
            elif message not in self.pending_failure:
                self.pending_failure = f"{self.pending_failure}\n\n{message}"
            return
        raise AssertionError(message)

    def _kept(self, leaves: dict[str, Leaf]) -> dict[str, Leaf]:
        """A later run's leaves as its evidence: run 0's own leaf where the bytes are the
        same (a copy would only be compared with it and dropped), else a copy, as the
        test may still change the value it checked."""
        first = self._evidence.get(0, {})
        kept = {}
        for key, leaf in leaves.items():
            same = first.get(key)
            if same is not None and bits_equal(same, leaf):
                kept[key] = same
            else:
                kept[key] = replace(leaf, data=leaf.data.copy())
        return kept

    def _record(self, name: str, leaves: dict[str, Leaf]) -> None:
        __tracebackhide__ = True
        try:
            for key, leaf in leaves.items():
                self._writer.keep(key, leaf)
        except OSError as exc:
            self._writer.discard()
            self._write_failed = True
            raise GoldenFileError(
                f"golden_tensor.check: the golden file of {self.test_id} cannot be written "
                f"beside {self.path}: {exc}"
            ) from None
        self._recorded[name] = list(leaves)

    def _claim_name(self, name: str | None) -> str:
        __tracebackhide__ = True
        if name is None:
            name = str(self._counter)
            self._counter += 1
        elif not isinstance(name, str):
            raise TypeError(
                f"golden_tensor.check: name must be a string, got {type(name).__name__} {name!r}"
            )
        if not name:
            raise ValueError("golden_tensor.check: name must not be empty")
        if name == METADATA_KEY:
            raise ValueError(f"golden_tensor.check: the name {name!r} is reserved; choose another")
        if name in self._names:
            raise ValueError(
                f"golden_tensor.check: the name {name!r} is used twice in this test; "
                "every check needs its own name"
            )
        return name

    def _tolerance(
        self, leaf: Leaf, rtol: float | None, atol: float | None, exact: bool
    ) -> Tolerance:
        return resolve_tolerance(leaf.dtype, self.tolerances, rtol=rtol, atol=atol, exact=exact)

    def _golden(self) -> GoldenFile:
        __tracebackhide__ = True
        if self._file is not None:
            return self._file
        if self._file_error is not None:
            raise self._file_error
        command = update_command(self.command_id)
        try:
            self._file = read_golden(self.path)
        except FileNotFoundError:
            self._file_error = GoldenFileError(
                f"no golden file for {self.test_id}: {self.path} does not exist.\n"
                f"  Record it (nothing is written without asking): {command}"
            )
            raise self._file_error from None
        except GoldenFormatError as exc:
            self._file_error = GoldenFileError(
                f"the golden file of {self.test_id} cannot be read: {exc.path}: {exc.problem}.\n"
                f"  Re-record it: {command}"
            )
            raise self._file_error from None
        except OSError as exc:
            self._file_error = GoldenFileError(
                f"the golden file {self.path} of {self.test_id} cannot be opened: {exc}"
            )
            raise self._file_error from None
        return self._file

    def _compare(
        self,
        name: str,
        leaves: dict[str, Leaf],
        *,
        rtol: float | None,
        atol: float | None,
        exact: bool,
        equal_nan: bool,
    ) -> str | None:
        __tracebackhide__ = True
        try:
            golden = self._golden()
        except GoldenFileError as exc:
            if self.defer_failures:
                return str(exc)
            raise
        stored = golden.check_keys(name)
        if stored is None:
            recorded = golden.check_names()
            listing = ", ".join(repr(n) for n in recorded[:20]) or "none"
            message = (
                f"the golden file of {self.test_id} has nothing recorded for check {name!r} "
                f"({self.path}; recorded checks: {listing}).\n"
                "  Record it (nothing is written without asking): "
                f"{update_command(self.command_id)}"
            )
            if self.defer_failures:
                return message
            raise GoldenFileError(message)
        result = compare_leaves(
            leaves,
            golden.leaves(stored),
            lambda leaf: self._tolerance(leaf, rtol, atol, exact),
            equal_nan=equal_nan,
        )
        for key, leaf in leaves.items():
            comparison = result.comparisons.get(key)
            if comparison is None:
                self._entries.append(key_entry(key, "extra", leaf, None))
            else:
                outcome = "passed" if comparison.passed else "failed"
                self._entries.append(key_entry(key, outcome, leaf, comparison))
        if result.passed:
            return None
        self.values_differ = True
        devices = sorted({leaf.device for leaf in leaves.values()})
        current = environment_metadata(test_id=self.test_id, seed=self.seed, devices=devices)
        return mismatch_message(
            title=f"check {name!r} of {self.test_id}",
            path=self.path,
            comparisons=result.comparisons,
            missing=result.missing,
            extra=result.extra,
            recorded=golden.metadata,
            current=current,
            command_id=self.command_id,
        )

    # -- the end of the test ---------------------------------------------------------

    def finish(self, test_passed: bool) -> GoldenResult:
        """End the test: under ``--update-golden`` write the file (atomically, only when
        the test passed and the content changed); return the tallies."""
        self._close()
        if not self.update:
            return GoldenResult(
                path=self.path,
                passed=self._passed,
                failed=self._failed,
                used=bool(self._passed or self._failed),
                entries=tuple(self._entries),
            )
        if not self._recorded:
            self._writer.discard()
            return GoldenResult(path=self.path)
        if not test_passed or self._write_failed:
            self._writer.discard()
            return GoldenResult(path=self.path, used=True, not_written=True)
        try:
            return self._write()
        finally:
            self._writer.discard()

    def _close(self) -> None:
        golden, self._file = self._file, None
        if golden is not None:
            golden.close()

    def _write(self) -> GoldenResult:
        recording = self._recording_outcome()
        file_written = False
        if not recording.unchanged:
            metadata = environment_metadata(
                test_id=self.test_id, seed=self.seed, devices=recording.devices
            )
            metadata[CHECKS_KEY] = encode_checks(self._recorded)
            if self._trace_text is not None:
                metadata[TRACE_KEY] = self._trace_text
            file_written = self._writer.commit(metadata)
        return GoldenResult(
            path=self.path,
            passed=recording.passed,
            written=recording.written,
            updated=recording.updated,
            used=True,
            file_written=file_written,
            entries=recording.entries,
        )

    def _recording_outcome(self) -> _RecordingOutcome:
        # Its own frame, so no leaf (a map of the temporary file) outlives the comparison:
        # the writer closes its maps before installing the file.
        kept = self._writer.leaves()
        old = self._writer.baseline()
        old_names = old.check_names() if old is not None else []
        recording = _RecordingOutcome(devices=sorted({leaf.device for leaf in kept.values()}))
        entries: list[dict[str, Any]] = []
        for name, keys in self._recorded.items():
            checked = {key: kept[key] for key in keys}
            if old is None or name not in old_names:
                recording.written += 1
                outcome = "written"
            elif _same_content(old, name, checked):
                recording.passed += 1
                outcome = "unchanged"
            else:
                recording.updated += 1
                outcome = "updated"
            entries.extend(key_entry(key, outcome, leaf, None) for key, leaf in checked.items())
        recording.entries = tuple(entries)
        recording.unchanged = (
            old is not None
            and recording.written == 0
            and recording.updated == 0
            and sorted(old.entries) == sorted(kept)
            and old.recorded_checks() == self._recorded
            and old.metadata.get(TRACE_KEY) == self._trace_text
        )
        return recording


@dataclass
class _RecordingOutcome:
    """How the checks recorded under ``--update-golden`` compare with the old file."""

    devices: list[str]
    passed: int = 0
    written: int = 0
    updated: int = 0
    unchanged: bool = False
    entries: tuple[dict[str, Any], ...] = ()


def _same_content(golden: GoldenFile, name: str, leaves: Mapping[str, Leaf]) -> bool:
    stored = golden.check_keys(name)
    if stored is None or sorted(stored) != sorted(leaves):
        return False
    return all(bits_equal(leaf, golden.leaf(key)) for key, leaf in leaves.items())
