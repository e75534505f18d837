"""Fingerprints of every torch module call, in call order.

While a :func:`tracing` block is active, two global module hooks
(``torch.nn.modules.module.register_module_forward_pre_hook`` and
``register_module_forward_hook``) note every module call: its qualified name within the
outermost module being called (``encoder.stages.1.layers.0.drop_path``), its class, its
training flag, whether it is a stochastic layer, and fingerprints of its inputs, outputs and
own state. A fingerprint holds, for each tensor found in a nested value, its path, dtype,
shape and a digest of its bytes: never a copy, so a trace's memory grows with the number
of calls, not with tensor sizes. Two traces of the same code are compared call by call to find
the first module whose output changed (see ``diagnose``).

Limits, by design:

- Only calls that go through ``Module.__call__`` are seen: ``module.forward(x)`` bypasses
  every hook, and so does the inside of a compiled or scripted module. A compiled module
  is one call at its boundary (see :mod:`pytest_determinism.state.hooks`), named by the
  compiled module's class, with the stochastic layers inside it listed in
  :attr:`CallRecord.compiled`.
- Calls made on another thread than the one that opened the block are ignored.
- Positional arguments are fingerprinted on entry, keyword arguments when the call returns
  (global pre-hooks do not receive them), so an in-place change to a keyword argument shows
  as an input difference.
- Tensors are digested by :mod:`pytest_determinism.nondeterminism.digest`: up to 8 KiB
  whole, larger ones by a fixed sample of 256 of their 64-bit words spread evenly over them
  plus their last bytes, so a difference confined to a few elements of a large tensor can
  go unseen at that call and show at the next call it spreads to (a dense change, such as
  dropout or noise makes, is always seen).
- Tensors off the CPU are sampled on their device; only the sample is copied to the CPU,
  which synchronises the device.
- Calls of torch's elementwise activations and reshapes (``ReLU``, ``GELU``, ``Identity``,
  ``Flatten``, ...: exactly those classes, not subclasses) are not recorded unless
  outermost: they cannot introduce a difference, and their output is fingerprinted as the
  next call's input.
- A module's parameters are fingerprinted by their in-place version counters, not their
  values: hashing every weight on every run would cost more than the forward pass. Its
  buffers (running statistics, caches) are hashed.
- A tensor's digest is reused within a block while its version counter stands still, so a
  change made through ``tensor.data`` may go unseen. Buffers of a module called in training
  mode are hashed afresh at its next call: batch_norm updates its running statistics
  without moving their version counters.

Nothing is installed while no block is active. Blocks nest: the innermost one records and
every enclosing one stands aside (its hooks removed) until it ends, so a helper that runs its
own checks inside a test that is itself being checked decides alone.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_determinism.nondeterminism.blocks import OutermostObserver, block
from pytest_determinism.nondeterminism.digest import array_digest, tensor_digest
from pytest_determinism.state import hooks
from pytest_determinism.state.evalmode import is_stochastic
from pytest_determinism.state.snapshot import TorchFlags, capture_torch_flags

if TYPE_CHECKING:
    from pytest_determinism.nondeterminism.ops import OpRecorder

__all__ = [
    "OUTSIDE",
    "CallRecord",
    "Fingerprint",
    "LeafPrint",
    "OutermostObserver",
    "Returned",
    "Trace",
    "Tracer",
    "tracing",
]

#: One value inside a call's inputs, outputs or state: ``(path, dtype or type name, shape,
#: digest)``. The digest is a hash of a tensor's bytes, ``hash()`` of a plain Python
#: value, a parameter's version counter (type name ``"version"``), ``-1`` for a tensor
#: whose bytes cannot be read (sparse, meta, subclasses without storage) and ``0`` for an
#: object that is not looked into.
LeafPrint = tuple[str, str, tuple[int, ...], int]

#: Everything found in one nested value, in traversal order.
Fingerprint = tuple[LeafPrint, ...]

#: Called as ``returned(index, module, result)`` when call number ``index`` returns
#: normally: what a recorder that needs more than fingerprints of the outputs reads.
Returned = Callable[[int, Any, Any], None]

# Containers nested deeper than this are summarised by their type: module arguments that
# deep are configuration, not activations, and the bound keeps self-containing lists finite.
_MAX_DEPTH = 6

# Positions in a raw call row; rows are plain lists because a dataclass per call costs
# more than the rest of the bookkeeping, and most traces are never read call by call.
_PARENT, _OUTER, _QUALNAME, _CLASS, _INPUTS, _STATE, _OUTPUTS, _TRAINING, _LAST, _COMPILED = range(
    10
)


@dataclass(frozen=True, eq=False)
class CallRecord:
    """One module call.

    ``index`` is its position in entry order; the calls nested in it are ``index + 1`` to
    ``last`` inclusive, and ``parent`` is the enclosing call (``-1`` for an outermost call).
    ``outer`` numbers the outermost call it belongs to, ``root`` is that outermost module's
    class name and ``qualname`` the name within it (``""`` for the outermost module itself).
    ``training`` is read when the call returns, after every pre-hook (the plugin's eval-mode
    switch included) has run. ``outputs`` is ``None`` when the forward raised. ``state``
    fingerprints the module's own buffers and parameters on entry.

    ``compiled`` is ``None`` for a module that runs as Python; for a compiled one
    (``torch.compile(module)``, whose class is then the compiled module's, or
    ``module.compile()``) the calls inside it are not seen, and it holds instead the
    stochastic layers inside the module with their mode, as ``"name (Class, training)"``.
    """

    index: int
    parent: int
    outer: int
    root: str
    qualname: str
    cls: str
    cls_module: str
    stochastic: bool
    inputs: Fingerprint
    state: Fingerprint
    outputs: Fingerprint | None
    training: bool
    last: int
    compiled: tuple[str, ...] | None = None

    @property
    def display_name(self) -> str:
        """The qualified name, or ``<root Class>`` for an outermost call."""
        return self.qualname or f"<root {self.root}>"

    @property
    def from_torch(self) -> bool:
        """Whether the module's class is one of torch's own (``torch.nn.Linear``, ...)."""
        return self.cls_module == "torch" or self.cls_module.startswith("torch.")


@dataclass(eq=False)
class Trace:
    """Every module call of one :func:`tracing` block, complete once the block has ended.

    ``settings`` are the torch flags in force when the block began (threads, deterministic
    algorithms, TF32, ...).
    """

    settings: TorchFlags | None = None
    rows: list[list[Any]] = field(default_factory=list, repr=False)
    exit_order: list[int] = field(default_factory=list, repr=False)
    outermost: list[int] = field(default_factory=list)
    _records: list[CallRecord] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def calls(self) -> list[CallRecord]:
        """The calls in entry order (an enclosing call before the calls inside it)."""
        if self._records is None or len(self._records) != len(self.rows):
            self._records = [self._record(i) for i in range(len(self.rows))]
        return self._records

    def by_exit(self) -> list[CallRecord]:
        """The calls in the order they returned: the innermost call that changed comes
        before the calls enclosing it. A call that never returned is left out."""
        calls = self.calls
        return [calls[i] for i in self.exit_order]

    def nested(self, record: CallRecord) -> list[CallRecord]:
        """The calls made inside ``record``, in entry order."""
        return self.calls[record.index + 1 : record.last + 1]

    def _record(self, index: int) -> CallRecord:
        row = self.rows[index]
        cls, cls_module, stochastic, _ = row[_CLASS]
        outer = row[_OUTER]
        return CallRecord(
            index=index,
            parent=row[_PARENT],
            outer=outer,
            root=self.rows[self.outermost[outer]][_CLASS][0],
            qualname=row[_QUALNAME],
            cls=cls,
            cls_module=cls_module,
            stochastic=stochastic,
            inputs=row[_INPUTS],
            state=row[_STATE],
            outputs=row[_OUTPUTS],
            training=row[_TRAINING],
            last=row[_LAST],
            compiled=row[_COMPILED],
        )


_PLAIN = (bool, int, float, complex, str, bytes, type(None))
_get_ident = threading.get_ident

# torch.nn classes (exactly these, not subclasses) whose output is a fixed elementwise or
# reshaping function of their input: they cannot be where two runs part, and their output
# is fingerprinted anyway as the input of the next call. Not recording them (unless called
# outermost) saves a third of the calls of a typical network.
_PASS_THROUGH = """
    CELU ELU GELU GLU Hardshrink Hardsigmoid Hardswish Hardtanh Identity LeakyReLU LogSigmoid
    Mish ReLU ReLU6 SELU SiLU Sigmoid Softplus Softshrink Softsign Tanh Tanhshrink Threshold
    Flatten Unflatten
"""


@functools.cache
def _pass_through_classes(torch: Any) -> frozenset[type]:
    nn = torch.nn
    return frozenset(getattr(nn, name) for name in _PASS_THROUGH.split() if hasattr(nn, name))


class Tracer:
    """The recording state of one :func:`tracing` block; ``enter`` and ``exit`` are the
    global hooks while it is the innermost block. Subclassed by the op tracer
    (:mod:`pytest_determinism.nondeterminism.op_tracing`), which reads the rows through
    :meth:`compiled`."""

    def __init__(
        self,
        torch: Any,
        observer: OutermostObserver | None,
        returned: Returned | None = None,
        every_class: bool = False,
    ) -> None:
        self.torch = torch
        self.returned = returned
        self.tensor_type = torch.Tensor
        self.observer = observer
        self.thread = threading.get_ident()
        self.trace = Trace(settings=capture_torch_flags(torch))
        self.stack: list[tuple[Any, list[Any]]] = []
        # Module id -> qualified name, a table per root (``table``: the one of the
        # outermost call now running), rebuilt at most once when a module is missing.
        self.tables: dict[int, dict[int, str]] = {}
        self.rebuilt: set[int] = set()
        self.table: dict[int, str] = {}
        # id(tensor) -> (weak reference, version, data pointer, dtype name, shape, digest):
        # the output of one call is usually the input of the next, and is hashed once.
        self.digests: dict[int, tuple[Any, int, int, str, Any, int]] = {}
        self.dtype_names: dict[Any, str] = {}
        self.classes: dict[type, tuple[str, str, bool, bool]] = {}
        self.pass_through = frozenset() if every_class else _pass_through_classes(torch)

    def install(self) -> None:
        hooks.subscribe(pre=self.enter, post=self.exit)

    def uninstall(self) -> None:
        hooks.unsubscribe(pre=self.enter, post=self.exit)

    @staticmethod
    def compiled(row: list[Any]) -> bool:
        """Whether the call of a raw row (``trace.rows``, ``stack``) is a compiled module."""
        return row[_COMPILED] is not None

    def _leaf(self, tensor: Any, path: str) -> LeafPrint:
        try:
            version = tensor._version
            pointer = tensor.data_ptr()
        except RuntimeError:
            # Inference tensors have no version counter and some subclasses no storage:
            # their digest cannot be reused safely.
            return (
                path,
                self._dtype_name(tensor),
                tensor.shape,
                tensor_digest(self.torch, tensor),
            )
        key = id(tensor)
        hit = self.digests.get(key)
        if hit is not None and hit[1] == version and hit[2] == pointer and hit[0]() is tensor:
            # In-place changes of shape bump the version too, so the shape is reused with
            # the digest.
            return (path, hit[3], hit[4], hit[5])
        name = self._dtype_name(tensor)
        shape = tensor.shape
        digest = tensor_digest(self.torch, tensor)
        self.digests[key] = (weakref.ref(tensor), version, pointer, name, shape, digest)
        return (path, name, shape, digest)

    def _dtype_name(self, tensor: Any) -> str:
        dtype = tensor.dtype
        name = self.dtype_names.get(dtype)
        if name is None:
            name = self.dtype_names[dtype] = str(dtype).removeprefix("torch.")
        return name

    def _walk(self, value: Any, path: str, out: list[LeafPrint], depth: int) -> None:
        if isinstance(value, self.tensor_type):
            out.append(self._leaf(value, path))
        elif isinstance(value, _PLAIN):
            # hash(nan) depends on the object since Python 3.10: give every NaN one digest.
            out.append((path, type(value).__name__, (), hash(value) if value == value else -2))
        elif depth >= _MAX_DEPTH:
            out.append((path, type(value).__qualname__, (), 0))
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                self._walk(item, f"{path}.{i}" if path else str(i), out, depth + 1)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                self._walk(item, f"{path}.{key}" if path else str(key), out, depth + 1)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                name = item.name
                self._walk(getattr(value, name), f"{path}.{name}" if path else name, out, depth + 1)
        else:
            out.append((path, type(value).__qualname__, (), array_digest(value)))

    def _fingerprint(self, value: Any) -> Fingerprint:
        # The common cases first: one tensor, or a tuple of tensors (positional arguments).
        if type(value) is self.tensor_type:
            return (self._leaf(value, ""),)
        out: list[LeafPrint] = []
        if type(value) is tuple:
            for i, item in enumerate(value):
                if type(item) is self.tensor_type:
                    out.append(self._leaf(item, str(i)))
                else:
                    self._walk(item, str(i), out, 1)
        else:
            self._walk(value, "", out, 0)
        return tuple(out)

    def _state(self, module: Any) -> Fingerprint:
        out: list[LeafPrint] = []
        for name, buffer in module._buffers.items():
            if buffer is not None:
                out.append(self._leaf(buffer, name))
        for name, parameter in module._parameters.items():
            if parameter is not None:
                try:
                    version = parameter._version
                except RuntimeError:
                    version = -1
                out.append((name, "version", (), version))
        return tuple(out)

    def _table(self, root: Any) -> dict[int, str]:
        table = self.tables.get(id(root))
        if table is None:
            table = {id(sub): name for name, sub in root.named_modules()}
            self.tables[id(root)] = table
        return table

    def _missing_name(self, module: Any, parent: list[Any]) -> str:
        # A module the root's table does not know: attached after the first call, built
        # inside forward, or borrowed from elsewhere.
        root = self.stack[0][0]
        if id(root) not in self.rebuilt:
            self.rebuilt.add(id(root))
            del self.tables[id(root)]
            self.table = self._table(root)
            name = self.table.get(id(module))
            if name is not None:
                return name
        suffix = f"<{type(module).__name__}>"
        return f"{parent[_QUALNAME]}.{suffix}" if parent[_QUALNAME] else suffix

    def _compiled_info(
        self, module: Any, info: tuple[str, str, bool, bool]
    ) -> tuple[tuple[str, str, bool, bool], tuple[str, ...]]:
        """The class info naming a compiled call, and the stochastic layers inside it."""
        if info[3]:
            # torch.compile(module): name the compiled module, not its wrapper.
            module = module._orig_mod
            info = self._class_info(module)
        layers = tuple(
            f"{name or '<root>'} ({type(sub).__name__}, {'training' if sub.training else 'eval'})"
            for name, sub in module.named_modules()
            if is_stochastic(self.torch, sub)
        )
        return info, layers

    def _class_info(self, module: Any) -> tuple[str, str, bool, bool]:
        cls = type(module)
        info = self.classes.get(cls)
        if info is None:
            # The last item: whether this is torch.compile's wrapper around a module.
            optimized = cls.__name__ == "OptimizedModule" and cls.__module__.startswith(
                "torch._dynamo"
            )
            info = (cls.__name__, cls.__module__, is_stochastic(self.torch, module), optimized)
            self.classes[cls] = info
        return info

    def enter(self, module: Any, args: tuple[Any, ...]) -> None:
        """Global forward pre-hook: open a call row."""
        stack = self.stack
        if stack and type(module) in self.pass_through:
            return
        if _get_ident() != self.thread:
            return
        trace = self.trace
        if stack:
            parent = stack[-1][1]
            qualname = self.table.get(id(module))
            if qualname is None:
                qualname = self._missing_name(module, parent)
            parent_index = parent[_LAST]
            outer = parent[_OUTER]
        else:
            self.table = self._table(module)
            qualname = ""
            parent_index = -1
            outer = len(trace.outermost)
            trace.outermost.append(len(trace.rows))
            if self.observer is not None:
                self.observer.outermost_enter(module, outer)
        index = len(trace.rows)
        info = self.classes.get(type(module)) or self._class_info(module)
        compiled = None
        if info[3] or module.__dict__.get("_compiled_call_impl") is not None:
            info, compiled = self._compiled_info(module, info)
        # Inlined common cases (one tensor argument, a class seen before): this runs for
        # every module call.
        if len(args) == 1 and type(args[0]) is self.tensor_type:
            inputs: Fingerprint = (self._leaf(args[0], "0"),)
        else:
            inputs = self._fingerprint(args)
        # _LAST holds the row's own index until the call returns, so children can read it.
        row = [
            parent_index,
            outer,
            qualname,
            info,
            inputs,
            self._state(module) if module._buffers or module._parameters else (),
            None,
            False,
            index,
            compiled,
        ]
        trace.rows.append(row)
        stack.append((module, row))

    def exit(self, module: Any, args: tuple[Any, ...], *rest: Any) -> None:
        """Global forward hook (always called): close the call row."""
        stack = self.stack
        # A call entered before this block began, or one whose pre-hooks raised before
        # ours ran, is not on the stack: ignore its exit.
        if not stack or stack[-1][0] is not module or _get_ident() != self.thread:
            return
        row = stack.pop()[1]
        trace = self.trace
        # torch passes (kwargs, result) normally, only (result,) when the forward raised.
        if len(rest) == 2:
            kwargs, result = rest
            if kwargs:
                row[_INPUTS] += self._fingerprint(kwargs)
            if type(result) is self.tensor_type:
                row[_OUTPUTS] = (self._leaf(result, ""),)
            else:
                row[_OUTPUTS] = self._fingerprint(result)
        row[_TRAINING] = training = bool(module.training)
        if training and module._buffers:
            # Kernels such as batch_norm update running statistics in training mode without
            # bumping the version counter: hash those buffers afresh at the next call.
            for buffer in module._buffers.values():
                self.digests.pop(id(buffer), None)
        index = row[_LAST]
        trace.exit_order.append(index)
        row[_LAST] = len(trace.rows) - 1
        if self.returned is not None and len(rest) == 2:
            self.returned(index, module, rest[1])
        if not stack and self.observer is not None:
            self.observer.outermost_exit(module, row[_OUTER])


#: The ``window`` of :func:`tracing` that records the ops run outside every module call.
OUTSIDE = -1


@contextmanager
def tracing(
    observer: OutermostObserver | None = None,
    *,
    ops: OpRecorder | None = None,
    window: int = OUTSIDE,
    returned: Returned | None = None,
    every_class: bool = False,
) -> Iterator[Trace]:
    """Record every module call made inside the block into the yielded :class:`Trace`.

    ``observer`` is told when each outermost call starts and ends (the seed probe). An
    enclosing block (``tracing``, or :func:`~pytest_determinism.nondeterminism.blocks.
    watching`) records nothing, and its observer hears nothing, until this one ends. No
    hook remains installed once the outermost block has ended.

    With ``ops``, the torch ops run inside call number ``window`` (its entry index, as in
    :attr:`CallRecord.index`), or outside every module call for :data:`OUTSIDE`, are
    recorded into it as well. ``returned`` hears each call's result as it returns (without
    ``ops`` only). ``every_class`` records the calls of pass-through classes too (``ReLU``,
    ``GELU``, ``Identity``, ...), which cannot make two runs of one program part but do
    tell two versions of a model apart.
    """
    import torch

    if ops is None:
        tracer = Tracer(torch, observer, returned, every_class)
        with block(tracer):
            yield tracer.trace
        return
    from pytest_determinism.nondeterminism.op_tracing import OpTracer

    op_tracer = OpTracer(torch, observer, ops, window)
    op_tracer.sync()
    try:
        with block(op_tracer):
            yield op_tracer.trace
    finally:
        op_tracer.close()
