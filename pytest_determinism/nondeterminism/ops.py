"""Below the module: the torch ops run inside one module call, and the first that differed.

When two runs part inside a module call, the module's name says where but not what: the
line that drew the random number or ran the nondeterministic kernel is inside its forward
(or in a function it calls, in another library). :class:`OpRecorder` notes every aten op
dispatched while it is switched on (a ``TorchDispatchMode``): the op's name, digests of
its inputs (taken before it runs, so an in-place op such as ``bernoulli_`` is seen with
the input it got) and of its outputs, and the first stack frame outside torch and this
plugin, the line of the user's or the library's code that called it.
:func:`first_op_difference` lines two recordings up and names the first op whose output
differed, and whether its inputs were identical (then the op itself made the difference: a
random draw, a nondeterministic kernel) or not (differing data came in there from outside
torch: a tensor made from NumPy or Python's ``random``, which no op creates).

Bounded by design: digests, never copies (see
:mod:`~pytest_determinism.nondeterminism.digest`), and at most :data:`MAX_OPS` ops a
recording. Switched on only for the re-runs that explain a difference, and only inside the
diverging call (see :mod:`~pytest_determinism.nondeterminism.trace`). Inside a compiled
module the ops run in compiled code that a dispatch mode does not see one by one; the
caller does not record there.
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pytest_determinism.nondeterminism.digest import tensor_digest

__all__ = ["MAX_OPS", "OpDifference", "OpRecord", "OpRecorder", "first_op_difference"]

#: The most ops one recording keeps. A module call of a small model runs tens to a few
#: thousand ops; past this the recording stops (and says so) rather than grow.
MAX_OPS = 20_000

_PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class OpRecord:
    """One dispatched op: its name (``aten.rand.default``), digests of its inputs and
    outputs, and where it was called from (``(filename, line, function)`` of the first
    frame outside torch and the plugin, or ``None``)."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    where: tuple[str, int, str] | None


@dataclass
class OpRecorder:
    """The ops of one run, noted while :attr:`active` (see :meth:`mode`)."""

    ops: list[OpRecord] = field(default_factory=list)
    active: bool = False
    full: bool = False
    _internal: dict[Any, bool] = field(default_factory=dict, repr=False)
    _torch_dir: str = ""

    def mode(self, torch: Any) -> Any:
        """A ``TorchDispatchMode`` feeding this recorder, to enter around the run."""
        self._torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
        return _mode_class(torch)(self, torch)

    def _where(self) -> tuple[str, int, str] | None:
        frame: FrameType | None = sys._getframe(2)
        internal = self._internal
        while frame is not None:
            code = frame.f_code
            inside = internal.get(code)
            if inside is None:
                name = code.co_filename
                inside = internal[code] = name.startswith((self._torch_dir, _PLUGIN_DIR)) or (
                    name.startswith("<") and "torch" in name
                )
            if not inside:
                return code.co_filename, frame.f_lineno, code.co_name
            frame = frame.f_back
        return None

    def note(self, name: str, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> None:
        """Keep one op, unless the recording is full."""
        if len(self.ops) >= MAX_OPS:
            self.full = True
            return
        self.ops.append(OpRecord(name, inputs, outputs, self._where()))


def _digests(torch: Any, value: Any) -> tuple[int, ...]:
    from torch.utils._pytree import tree_leaves

    out = []
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            out.append(tensor_digest(torch, leaf))
        elif isinstance(leaf, bool | int | float | str | type(None)):
            # Sizes, scalars and flags are part of what an op was asked to do.
            out.append(hash(leaf) if leaf == leaf else -2)
        else:
            out.append(hash(type(leaf).__qualname__))
    return tuple(out)


_mode_classes: dict[int, type] = {}


def _mode_class(torch: Any) -> type:
    cached = _mode_classes.get(id(torch))
    if cached is not None:
        return cached
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Recording(TorchDispatchMode):  # type: ignore[misc, no-untyped-call]
        def __init__(self, recorder: OpRecorder, torch: Any) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.recorder = recorder
            self.torch = torch

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            recorder = self.recorder
            if not recorder.active or recorder.full:
                return func(*args, **kwargs)
            # Inputs before the op runs: an in-place op changes them.
            inputs = _digests(self.torch, (args, kwargs))
            result = func(*args, **kwargs)
            recorder.note(str(func), inputs, _digests(self.torch, result))
            return result

    _mode_classes[id(torch)] = _Recording
    return _Recording


@dataclass(frozen=True)
class OpDifference:
    """The first op whose output differed between two recordings.

    ``name`` is the aten op, ``number`` its position among the recorded ops,
    ``inputs_identical`` whether its inputs were the same in both runs, ``where`` the line
    that called it as ``path:LINE in FUNCTION: source``, or ``None`` when unknown.
    ``sequence`` is true when the two runs ran different ops at that point (``name`` is
    then run 0's op, ``other_name`` the other run's).
    """

    name: str
    number: int
    inputs_identical: bool
    where: str | None
    sequence: bool = False
    other_name: str | None = None


def _site_packages_relative(path: str) -> str | None:
    parts = path.replace(os.sep, "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = len(parts) - 1 - parts[::-1].index(marker)
            return "/".join(parts[index + 1 :])
    return None


def describe_where(where: tuple[str, int, str] | None, rootdir: str | None) -> str | None:
    """``path:LINE in FUNCTION: source line``, the path relative to the rootdir or to
    site-packages when it lies under one."""
    if where is None:
        return None
    filename, line, function = where
    shown = _site_packages_relative(filename)
    if shown is None and rootdir is not None:
        try:
            relative = os.path.relpath(filename, rootdir)
        except ValueError:  # another drive on Windows
            relative = filename
        shown = filename if relative.startswith("..") else relative.replace(os.sep, "/")
    text = f"{shown or filename}:{line} in {function}"
    source = linecache.getline(filename, line).strip()
    return f"{text}: {source}" if source else text


def first_op_difference(
    a: list[OpRecord], b: list[OpRecord], rootdir: str | None
) -> OpDifference | None:
    """The first op, in the order they ran, whose output differs between ``a`` and ``b``."""
    for number, (left, right) in enumerate(zip(a, b, strict=False)):
        if left.name != right.name:
            return OpDifference(
                left.name,
                number,
                left.inputs == right.inputs,
                describe_where(left.where, rootdir),
                sequence=True,
                other_name=right.name,
            )
        if left.outputs != right.outputs:
            return OpDifference(
                left.name, number, left.inputs == right.inputs, describe_where(left.where, rootdir)
            )
    return None
