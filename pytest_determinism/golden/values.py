"""Flattening nested model outputs into leaves that hold the exact bits of each tensor.

A *leaf* is one tensor-like value reduced to what a golden file stores: the dtype in torch's
spelling, the shape, and a C-contiguous CPU NumPy array with the same bits. Dtypes NumPy
lacks are held in a bit container of the same item size
(:mod:`pytest_determinism.golden.dtypes`), so ``data.shape`` always equals ``shape`` and
nothing is ever rounded on the way in.

torch is never imported here: a value can only be a torch tensor if the caller imported
torch already, so ``sys.modules`` tells whether to look for one.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np

from pytest_determinism.golden.caches import CacheLayer, UnknownLayout, cache_parts, layer_parts
from pytest_determinism.golden.dtypes import DTYPES, bytes_equal, numpy_dtype_name
from pytest_determinism.golden.exclude import Exclusion

__all__ = ["Leaf", "bits_equal", "flatten", "join_key"]


_WHAT_IS_ACCEPTED = (
    "expected a torch tensor, a NumPy array, a Python number, or a dict / list / tuple / "
    "dataclass / named tuple / Hugging Face cache of these"
)


@dataclass(frozen=True, eq=False)
class Leaf:
    """One tensor-like value, reduced to its exact bits.

    ``data`` is a C-contiguous CPU array whose shape equals ``shape`` and whose dtype is
    ``DTYPES[dtype].storage``; ``device`` is where the value lived (``"cpu"``,
    ``"cuda:0"``, ...). Leaves compare by identity: use :func:`bits_equal` for content.
    """

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]
    device: str = "cpu"

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return int(self.data.nbytes)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(self.data.size)


def bits_equal(a: Leaf, b: Leaf) -> bool:
    """Whether two leaves have the same dtype, the same shape and identical bytes.

    NaNs with identical bits are equal; ``0.0`` and ``-0.0`` are not. The device does not
    count: a value moved between devices unchanged is the same value.
    """
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes_equal(a.data, b.data)


def join_key(prefix: str, key: str) -> str:
    """Join a path and a key with ``.``; an empty side leaves the other alone."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}.{key}"


def flatten(
    value: object, *, copy: bool = True, prefix: str = "", exclude: object = None
) -> dict[str, Leaf]:
    """Flatten a value into ``{key: Leaf}``.

    A bare tensor, array or number gives the key ``prefix`` (``""`` by default); a nested
    dict (Hugging Face ``ModelOutput`` included), list or tuple gives keys joined with ``.``
    (``"hidden_states.3"``); named tuples and dataclasses use their field names; a Hugging
    Face cache object gives its key and value tensors per layer
    (:mod:`~pytest_determinism.golden.caches`: ``"cache.0.key"``). A ``None`` field of a
    dict, dataclass or named tuple is left out, as a ``ModelOutput`` leaves it out; a
    ``None`` in a list or tuple holds a place and is an error.

    ``exclude`` (``golden_tensor.check``'s argument: a key path or pattern, or a list of
    them, relative to ``value``; see :mod:`~pytest_determinism.golden.exclude`) leaves
    parts out before they are looked at; one that matches nothing is a ``ValueError``
    naming it. Given (even empty), error messages name the ``exclude=`` that would leave a
    part out.

    With ``copy`` (the default) every leaf owns its data, so later in-place changes to the
    value do not reach it; ``copy=False`` lets a leaf share memory with a C-contiguous CPU
    input, for callers that finish with the leaf before the value can change.

    Raises ``TypeError`` naming the key path and the type for anything that is not a
    strided tensor, an array or a number, and ``ValueError`` for keys that cannot be told
    apart once joined.
    """
    walk = _Walk(
        prefix=prefix,
        copy=copy,
        exclusion=Exclusion.parse(exclude),
        offers_exclude=exclude is not None,
    )
    walk.visit(value, "")
    unmatched = walk.exclusion.unmatched()
    if unmatched:
        raise ValueError(_unmatched_message(walk, unmatched))
    return walk.out


def _describe(path: str) -> str:
    return f"the value at {path!r}" if path else "the value"


def _bad_type(path: str, value: object, advice: str) -> TypeError:
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return TypeError(f"golden_tensor: {_describe(path)} has type {name}: {advice}")


def _unmatched_message(walk: _Walk, unmatched: list[str]) -> str:
    names = ", ".join(repr(entry) for entry in unmatched)
    # The user writes exclude= relative to the value, so its parts are shown that way: the
    # top-level ones, each with one full key when it is nested.
    # Every key is the prefix itself or starts with the prefix and a dot.
    keys = [key[len(walk.prefix) + 1 :] if walk.prefix else key for key in walk.out]
    shown = []
    for top, excluded in walk.tops[:12]:
        full = next((key for key in keys if key == top or key.startswith(f"{top}.")), top)
        if excluded:
            shown.append(f"{top!r} (excluded)")
        else:
            shown.append(repr(top) if full == top else f"{top!r} (e.g. {full!r})")
    if len(walk.tops) > 12:
        shown.append(f"... ({len(walk.tops)} in all)")
    if "" in keys:
        has = "it is a single tensor or number, with no parts"
    elif shown:
        has = f"its parts: {', '.join(shown)}"
    else:
        has = "it has no parts"
    verb = "matches" if len(unmatched) == 1 else "match"
    return (
        f"golden_tensor.check: exclude {names} {verb} no part of the value ({has}). "
        "Key paths are relative to the value checked, without the check's name, and leave "
        "out whole parts ('cache' leaves out 'cache.0.key'); patterns are matched with "
        "fnmatch ('*.attentions'); None fields are left out already. Fix the path or drop it"
    )


class _Walk:
    """One flattening: the leaves found so far and what the walk needs to find more."""

    def __init__(
        self, *, prefix: str, copy: bool, exclusion: Exclusion, offers_exclude: bool
    ) -> None:
        self.out: dict[str, Leaf] = {}
        self.prefix = prefix
        self.copy = copy
        self.exclusion = exclusion
        self.offers_exclude = offers_exclude
        self.active: set[int] = set()
        #: The parts at the top of the value, and whether each was excluded.
        self.tops: list[tuple[str, bool]] = []

    def leave_out(self, relative: str) -> str:
        """How to leave out the part at ``relative``, in the words of the caller's API."""
        if not self.offers_exclude or not relative:
            return "convert it or leave it out"
        # An item of a list (a list of labels) goes with its list.
        parts = relative.split(".")
        while len(parts) > 1 and parts[-1].isdigit():
            parts.pop()
        return f"convert it, or leave it out with exclude={'.'.join(parts)!r}"

    def add(self, path: str, leaf: Leaf) -> None:
        if path in self.out:
            raise ValueError(
                f"golden_tensor: two values flatten to the same key {path!r} "
                "(a key containing '.' clashes with a nested key); rename one of them"
            )
        self.out[path] = leaf

    def visit(self, value: object, relative: str) -> None:
        path = join_key(self.prefix, relative)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            self.add(path, _torch_leaf(torch, value, path, self.copy))
            return
        if isinstance(value, np.ndarray | np.generic):
            self.add(path, _numpy_leaf(value, path, self.copy))
            return
        if isinstance(value, bool | int | float | complex):
            self.add(path, _number_leaf(value, path))
            return
        if isinstance(value, numbers.Number):
            raise _bad_type(path, value, f"{_WHAT_IS_ACCEPTED}; convert it with float() or int()")
        if value is None:
            raise _bad_type(
                path,
                value,
                "None is left out only as a field of a dict, dataclass or named tuple; "
                "in a list or tuple it holds a place: drop it there",
            )
        try:
            container = _children(value, path)
        except UnknownLayout as exc:
            shown = value.layer if isinstance(value, CacheLayer) else value
            raise _bad_type(path, shown, f"{exc.advice}; {self.leave_out(relative)}") from None
        if container is None:
            raise _bad_type(path, value, f"{_WHAT_IS_ACCEPTED}; {self.leave_out(relative)}")
        if id(value) in self.active:
            raise ValueError(f"golden_tensor: {_describe(path)} contains itself")
        self.active.add(id(value))
        try:
            for key, child in container:
                inner = join_key(relative, key)
                excluded = bool(self.exclusion) and self.exclusion.excludes(inner)
                if not relative:
                    self.tops.append((inner, excluded))
                if not excluded:
                    self.visit(child, inner)
                elif self.exclusion.unmatched():
                    self.touch(child, inner)
        finally:
            self.active.discard(id(value))

    def touch(self, value: object, relative: str) -> None:
        """Let the entries not matched yet match inside a part left out, flattening nothing:
        ``["cache", "cache.0"]`` is redundant, not wrong."""
        try:
            container = _children(value, relative)
        except (TypeError, ValueError, UnknownLayout):
            return
        if container is None or id(value) in self.active:
            return
        self.active.add(id(value))
        try:
            for key, child in container:
                inner = join_key(relative, key)
                self.exclusion.excludes(inner)
                self.touch(child, inner)
        finally:
            self.active.discard(id(value))


def _children(value: object, path: str) -> list[tuple[str, object]] | None:
    """The parts of a container as ``(key, child)`` pairs, ``None`` for a non-container.

    Named parts that are ``None`` are left out here; positional ones stay, to be refused.
    """
    if isinstance(value, CacheLayer):
        return _named(layer_parts(value.layer))
    if isinstance(value, Mapping) or (
        callable(getattr(value, "keys", None))
        and hasattr(value, "__getitem__")
        and not isinstance(value, str)
    ):
        items: list[tuple[str, object]] = []
        # Objects that only look like mappings iterate over something else than keys.
        keys = list(value.keys())  # type: ignore[attr-defined]
        for key in keys:
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(
                    f"golden_tensor: {_describe(path)} has a key of type "
                    f"{type(key).__name__} ({key!r}); keys must be strings or ints"
                )
            text = str(key)
            if not text:
                raise ValueError(
                    f"golden_tensor: {_describe(path)} has an empty key; give it a name"
                )
            items.append((text, value[key]))  # type: ignore[index]
        return _named(items)
    if isinstance(value, tuple):
        # Named tuples and torch's return types (``torch.max(x, 0)``) have field names.
        names = getattr(value, "_fields", None) or getattr(type(value), "__match_args__", None)
        if names and len(names) == len(value):
            return _named([(str(name), getattr(value, name)) for name in names])
    if isinstance(value, list | tuple):
        return [(str(i), child) for i, child in enumerate(value)]
    if is_dataclass(value) and not isinstance(value, type):
        # A field declared but never set (init=False, no default) has nothing to check.
        return _named([(field.name, getattr(value, field.name, None)) for field in fields(value)])
    parts = cache_parts(value)
    return None if parts is None else _named(parts)


def _named(items: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [(key, child) for key, child in items if child is not None]


def _number_leaf(value: bool | int | float | complex, path: str) -> Leaf:
    array: np.ndarray[Any, Any]
    if isinstance(value, bool):
        array = np.array(value, dtype=np.bool_)
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            array = np.array(value, dtype=np.int64)
        elif 0 <= value < 2**64:
            array = np.array(value, dtype=np.uint64)
        else:
            raise _bad_type(
                path, value, f"{value} does not fit in 64 bits; store it as a float or a string"
            )
    elif isinstance(value, float):
        array = np.array(value, dtype=np.float64)
    else:
        array = np.array(value, dtype=np.complex128)
    return Leaf(dtype=array.dtype.name, shape=(), data=array)


def _numpy_leaf(value: np.ndarray[Any, Any] | np.generic, path: str, copy: bool) -> Leaf:
    if isinstance(value, np.ma.MaskedArray):
        raise _bad_type(
            path, value, "masked arrays lose their mask here; check .filled() and .mask"
        )
    array = np.asarray(value)
    name = numpy_dtype_name(array.dtype)
    if name is None:
        raise _bad_type(
            path,
            value,
            f"NumPy dtype {array.dtype} cannot be stored in a golden file; "
            "convert it to a supported dtype (bool, (u)int8-64, float16/32/64, complex64/128)",
        )
    info = DTYPES[name]
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    bits = array.view(info.storage) if not info.native else array
    data = np.array(bits, order="C", copy=True) if copy else np.ascontiguousarray(bits)
    return Leaf(dtype=name, shape=tuple(int(n) for n in array.shape), data=data)


def _torch_leaf(torch: Any, tensor: Any, path: str, copy: bool) -> Leaf:
    layout = str(tensor.layout).removeprefix("torch.")
    if tensor.layout != torch.strided:
        raise _bad_type(
            path, tensor, f"a {layout} tensor cannot be stored; check tensor.to_dense() instead"
        )
    if tensor.is_nested:
        raise _bad_type(
            path, tensor, "a nested tensor cannot be stored; check tensor.unbind() (a list)"
        )
    if tensor.is_quantized:
        raise _bad_type(
            path, tensor, "a quantized tensor cannot be stored; check tensor.dequantize()"
        )
    if tensor.is_meta or tensor.device.type == "meta":
        raise _bad_type(path, tensor, "a meta tensor has no data; check a tensor on a real device")
    name = str(tensor.dtype).removeprefix("torch.")
    info = DTYPES.get(name)
    if info is None:
        raise _bad_type(
            path,
            tensor,
            f"dtype {name} cannot be stored in a golden file; convert it to a supported dtype "
            f"(supported: {', '.join(sorted(DTYPES))})",
        )
    device = str(tensor.device)
    try:
        flat = tensor.detach()
        if flat.is_conj():
            flat = flat.resolve_conj()
        if flat.is_neg():
            flat = flat.resolve_neg()
        flat = flat.cpu().contiguous()
        if not info.native:
            flat = flat.view(getattr(torch, info.torch_container))
        # A CPU tensor that needed no conversion still shares the caller's memory.
        shares = flat.data_ptr() == tensor.data_ptr() and tensor.device.type == "cpu"
        array = flat.numpy()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise TypeError(
            f"golden_tensor: {_describe(path)} (a {type(tensor).__name__} of dtype {name} on "
            f"{device}) could not be copied to the CPU: {exc}"
        ) from exc
    data = array.view(info.storage)
    if copy and shares:
        data = data.copy()
    return Leaf(dtype=name, shape=tuple(int(n) for n in tensor.shape), data=data, device=device)
