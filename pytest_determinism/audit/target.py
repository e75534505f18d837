"""The audit's target: ``package.module:callable`` or ``path/to/file.py:callable``.

The callable is imported, called with no arguments after seeding every RNG, and returns a
model or ``(model, inputs)``. Where it returns only a model, inputs are inferred when that
is unambiguous, as a Python expression (:attr:`Target.inputs_code`) evaluated here and
written as-is into a starter test, so both see the same inputs. Every problem is a
:class:`TargetError` whose message names the thing and what to do; an exception raised by
the user's code comes with its own traceback, trimmed to the user's frames.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_determinism.state.rng import seed_everything

__all__ = [
    "Target",
    "TargetError",
    "describe_inputs",
    "forget_path",
    "load_target",
    "user_traceback",
]

#: Samples and tokens of inferred inputs: two samples, so the batch check has a batch.
BATCH = 2
TOKENS = 8
#: Side of an inferred image where the model does not configure one.
IMAGE_SIDE = 32

RETURN_ADVICE = (
    "return (model, inputs) from it instead: inputs a tensor (called as model(inputs)), a "
    "tuple (model(*inputs)) or a dict (model(**inputs)), e.g. "
    "`return model, {'input_ids': torch.tensor([[1, 2, 3], [4, 5, 6]])}`"
)


class TargetError(Exception):
    """A target that cannot be loaded, called or given inputs: exit status 2."""


@dataclass
class Target:
    """What the target's callable gave.

    ``spec`` is the target as written; ``module`` the importable module name (``None`` for a
    file target) or ``path`` the file; ``name`` the callable's name. ``inputs_code`` is the
    expression the inputs were inferred from (``None`` when the callable returned them),
    ``inferred_from`` says from what. ``path_entry`` is the folder a file target put first
    on ``sys.path`` so its neighbours import as from a script there, also when the callable
    or its forward pass imports lazily; :func:`forget_path` takes it off again.
    """

    spec: str
    module: str | None
    path: Path | None
    name: str
    model: Any
    inputs: Any
    inputs_code: str | None = None
    inferred_from: str | None = None
    path_entry: str | None = None


def _own_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_traceback(exc: BaseException) -> str:
    """``exc`` formatted as Python would, without this package's or importlib's frames nor
    torch's module-call wrappers."""
    own = _own_dir()
    formatted = traceback.TracebackException.from_exception(exc)
    kept = [
        frame
        for frame in formatted.stack
        if not frame.filename.startswith(own)
        and not frame.filename.startswith("<frozen ")
        and not _module_call(frame)
    ]
    formatted.stack = traceback.StackSummary.from_list(kept)
    return "".join(formatted.format()).rstrip("\n")


def _module_call(frame: traceback.FrameSummary) -> bool:
    """torch's own frames between a module call and its forward: noise in a traceback."""
    return frame.name in ("_wrapped_call_impl", "_call_impl") and frame.filename.replace(
        os.sep, "/"
    ).endswith("torch/nn/modules/module.py")


def _split(spec: str) -> tuple[str, str]:
    where, colon, name = spec.rpartition(":")
    # A Windows drive letter ("C:\\x.py") is not the separator.
    if not colon or not where or not name or (len(where) == 1 and where.isalpha()):
        raise TargetError(
            f"target {spec!r} is not `package.module:callable` or `path/to/file.py:callable` "
            "(a module or file, a colon, and the name of a function that builds the model)"
        )
    if not name.isidentifier():
        raise TargetError(f"target {spec!r}: {name!r} is not a Python name")
    return where, name


def _raised(what: str, exc: BaseException) -> TargetError:
    return TargetError(
        f"{what} raised {type(exc).__name__}: {exc}\n"
        f"The target's traceback (its own code, not pytest-determinism's):\n"
        f"{user_traceback(exc)}"
    )


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise TargetError(
                f"cannot import {name!r}: no module named {missing!r} on sys.path (run from "
                "the folder that holds the package, set PYTHONPATH, or give "
                "path/to/file.py:callable)"
            ) from None
        raise _raised(f"importing {name!r}", exc) from None
    except Exception as exc:
        raise _raised(f"importing {name!r}", exc) from None


def forget_path(entry: str | None) -> None:
    """Take the folder a file target put on ``sys.path`` (its ``path_entry``) off again."""
    if entry is not None and entry in sys.path:
        sys.path.remove(entry)


def _import_file(path: Path) -> tuple[Any, str]:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise TargetError(f"cannot import {str(path)!r}: the file {what}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode(), usedforsecurity=False).hexdigest()[:8]
    name = f"_audit_target_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {str(path)!r}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file imports its neighbours as a script run from its folder would.
    entry = str(resolved.parent)
    sys.path.insert(0, entry)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        forget_path(entry)
        raise _raised(f"importing {str(path)!r}", exc) from None
    return module, entry


def _callable(
    spec: str,
) -> tuple[str | None, Path | None, str | None, str, Callable[[], Any]]:
    where, name = _split(spec)
    entry = None
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        (module, entry), module_name = _import_file(path), None
    else:
        path, module_name = None, where
        module = _import_module(where)
    found = getattr(module, name, None)
    if found is None or not callable(found):
        forget_path(entry)
        if found is None:
            raise TargetError(
                f"{where} has no attribute {name!r} (the callable that builds the model)"
            )
        raise TargetError(
            f"{where}:{name} is a {type(found).__name__}, not a callable; name a function "
            "that takes no arguments and returns a model or (model, inputs)"
        )
    return module_name, path, entry, name, found


def describe_inputs(inputs: Any) -> str:
    """``input_ids int64[2, 8], attention_mask int64[2, 8]``: names, dtypes and shapes."""

    def one(value: Any) -> str:
        dtype = getattr(value, "dtype", None)
        shape = getattr(value, "shape", None)
        if dtype is None or shape is None:
            return type(value).__name__
        return f"{str(dtype).removeprefix('torch.')}{list(shape)}"

    if isinstance(inputs, dict):
        return ", ".join(f"{key} {one(value)}" for key, value in inputs.items()) or "{}"
    if isinstance(inputs, tuple | list):
        return ", ".join(f"input {i} {one(value)}" for i, value in enumerate(inputs)) or "()"
    return one(inputs)


def _check_inputs(torch: Any, spec: str, inputs: Any) -> None:
    values = inputs.values() if isinstance(inputs, dict) else inputs
    if isinstance(inputs, torch.Tensor) or (
        isinstance(inputs, dict | tuple | list)
        and any(isinstance(value, torch.Tensor) for value in values)
    ):
        return
    raise TargetError(
        f"{spec} returned inputs of type {type(inputs).__name__} holding no tensor; "
        + RETURN_ADVICE
    )


def _side(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def _device(model: Any) -> str:
    """``, device='cuda:0'`` for a model whose first parameter is not on the CPU, else ``""``:
    inferred inputs go where the model is."""
    first = next(model.parameters(), None)
    if first is None or first.device.type == "cpu":
        return ""
    return f", device={str(first.device)!r}"


def _from_config(model: Any) -> tuple[str, str] | None:
    """Inputs of a Hugging Face model from its config: ``(code, what)``, or ``None``."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is None or main is None:
        return None
    if main == "input_ids" and isinstance(getattr(config, "vocab_size", None), int):
        vocab = config.vocab_size
        limit = getattr(config, "max_position_embeddings", None)
        tokens = min(TOKENS, limit) if isinstance(limit, int) and limit > 0 else TOKENS
        device = _device(model)
        ids = f"torch.randint(0, {vocab}, ({BATCH}, {tokens}){device})"
        code = (
            f"{{'input_ids': {ids}, "
            f"'attention_mask': torch.ones({BATCH}, {tokens}, dtype=torch.int64{device})"
        )
        if getattr(config, "is_encoder_decoder", False):
            # An encoder-decoder model needs the decoder's tokens too (T5 has no default).
            code += f", 'decoder_input_ids': {ids}"
        code += "}"
        return code, f"its config ({type(config).__name__}: vocab_size {vocab})"
    if main == "pixel_values":
        channels = getattr(config, "num_channels", 3)
        height, width = _side(getattr(config, "image_size", IMAGE_SIDE))
        code = (
            f"{{'pixel_values': torch.randn({BATCH}, {channels}, {height}, {width}"
            f"{_device(model)})}}"
        )
        return code, f"its config ({type(config).__name__}: image_size, num_channels)"
    return None


def _from_first_layer(torch: Any, model: Any) -> tuple[str, str] | None:
    """Inputs from the first layer with parameters, when it is a ``Linear`` or ``Conv2d``."""
    for name, sub in model.named_modules():
        if next(sub.children(), None) is not None:
            continue
        if next(sub.parameters(recurse=False), None) is None:
            continue
        where = f"its first layer {name or type(model).__name__} ({type(sub).__name__})"
        device = _device(model)
        if isinstance(sub, torch.nn.Linear):
            return f"torch.randn({BATCH}, {sub.in_features}{device})", where
        if isinstance(sub, torch.nn.Conv2d):
            reach = [(k - 1) * d + 1 for k, d in zip(sub.kernel_size, sub.dilation, strict=True)]
            side = max(IMAGE_SIDE, *reach)
            return f"torch.randn({BATCH}, {sub.in_channels}, {side}, {side}{device})", where
        return None
    return None


def _infer(torch: Any, spec: str, model: Any) -> tuple[Any, str, str]:
    found = _from_config(model) or _from_first_layer(torch, model)
    if found is None:
        raise TargetError(
            f"{spec} returned a {type(model).__name__} without inputs, and they cannot be "
            "inferred (not a Hugging Face text or vision model, and its first layer with "
            f"parameters is not a Linear or Conv2d); {RETURN_ADVICE}"
        )
    code, what = found
    # The expression is the audit's own, built above from integers of the config.
    return eval(code, {"torch": torch}), code, what


def load_target(spec: str, seed: int) -> Target:
    """Import the target, call it seeded with ``seed``, and give its model and inputs."""
    import torch

    module, path, entry, name, build = _callable(spec)
    try:
        return _built(
            torch,
            spec,
            seed,
            Target(spec, module, path, name, model=None, inputs=None, path_entry=entry),
            build,
        )
    except TargetError:
        forget_path(entry)
        raise


def _built(torch: Any, spec: str, seed: int, target: Target, build: Callable[[], Any]) -> Target:
    seed_everything(seed)
    try:
        built = build()
    except Exception as exc:
        raise _raised(f"calling {spec}", exc) from None
    if isinstance(built, torch.nn.Module):
        model, inputs = built, None
    elif isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module):
        model, inputs = built
    else:
        raise TargetError(
            f"{spec} returned a {type(built).__name__}, not a torch.nn.Module or "
            f"(model, inputs); {RETURN_ADVICE}"
        )
    target.model, target.inputs = model, inputs
    if inputs is None:
        target.inputs, target.inputs_code, target.inferred_from = _infer(torch, spec, model)
    else:
        _check_inputs(torch, spec, inputs)
    return target
