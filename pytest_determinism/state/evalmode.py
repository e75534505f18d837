"""Running every torch module a test calls in eval mode, and naming the ones that were not.

A global forward pre-hook sees every module call, also inside third-party code. A module
found in training mode is switched to eval mode (with all its submodules) before its
forward runs; if it holds stochastic layers in training mode (dropout, DropPath /
stochastic depth, BatchNorm, ...), the user's own inference code forgot ``model.eval()``
and gives a different answer at every call outside the test, so it is named in a
``DeterminismWarning`` (or fails the test in strict mode). Every ``training`` flag changed
is restored when the test ends.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from pytest_determinism.errors import DeterminismWarning, StochasticModuleError

__all__ = ["EvalModeGuard", "is_stochastic", "stochastic_layers"]

# Layers that change their output from call to call in training mode, recognised by class
# name so third-party implementations (timm's DropPath, torchvision's StochasticDepth,
# transformers' ConvNextDropPath, ...) are found without importing their libraries.
_STOCHASTIC_NAME_PARTS = ("droppath", "stochasticdepth", "dropblock", "dropconnect", "dropout")


def is_stochastic(torch: Any, module: Any) -> bool:
    """Whether ``module`` draws random numbers in training mode (by type or class name)."""
    if isinstance(
        module, torch.nn.modules.dropout._DropoutNd | torch.nn.modules.batchnorm._BatchNorm
    ):
        return True
    name = type(module).__name__.lower().replace("_", "")
    return any(part in name for part in _STOCHASTIC_NAME_PARTS)


def stochastic_layers(module: Any) -> list[tuple[str, str]]:
    """``(qualified name, class name)`` of each stochastic layer in training mode in ``module``."""
    torch = sys.modules["torch"]
    return [
        (name or type(sub).__name__, type(sub).__name__)
        for name, sub in module.named_modules()
        if sub.training and is_stochastic(torch, sub)
    ]


_TORCH_DIR = None


def _outside_frame() -> tuple[str, int]:
    """File and line of the innermost caller outside torch and this plugin."""
    global _TORCH_DIR
    if _TORCH_DIR is None:
        _TORCH_DIR = os.path.dirname(sys.modules["torch"].__file__ or "")
    # The whole package, not only state/: the plugin's frames that call into user code
    # live in its top level.
    own_dir = os.path.dirname(os.path.dirname(__file__))
    frame = sys._getframe(1)
    while frame.f_back is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((_TORCH_DIR, own_dir)):
            break
        frame = frame.f_back
    return frame.f_code.co_filename, frame.f_lineno


def train_mode_message(module: Any, name: str, layers: list[tuple[str, str]]) -> str:
    """The text naming a module called in training mode and its stochastic layers."""
    shown = ", ".join(f"{qual} ({cls})" for qual, cls in layers[:8])
    more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
    cls = type(module).__name__
    who = name if name == cls else f"{name} ({cls})"
    return (
        f"{who} was called in training mode with stochastic layers active: {shown}{more}. "
        "In training mode these layers draw random numbers, so two calls on the same input "
        "give different outputs. Call model.eval() in your own inference code before "
        "calling the model (and use torch.no_grad() or torch.inference_mode())"
    )


class EvalModeGuard:
    """Switches modules to eval mode for one test and puts every flag back afterwards."""

    def __init__(self, *, strict: bool, warn: bool = True) -> None:
        self._strict = strict
        self._warn = warn
        self._saved: dict[int, tuple[Any, bool]] = {}
        self._roots: list[Any] = []
        self._handle: Any = None

    def install(self) -> None:
        """Register the global forward pre-hook (torch must be imported)."""
        torch = sys.modules["torch"]
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._pre_hook)

    def _qualified_name(self, module: Any) -> str:
        for root in self._roots:
            for name, sub in root.named_modules():
                if sub is module and name:
                    return f"{type(root).__name__}.{name}"
        return type(module).__name__

    def _pre_hook(self, module: Any, args: Any) -> None:
        # The hot path: every module call of the test lands here.
        if not module.training:
            return
        __tracebackhide__ = True
        layers = stochastic_layers(module)
        name = self._qualified_name(module)
        self.switch_to_eval(module)
        if not layers:
            return
        message = train_mode_message(module, name, layers)
        if self._strict:
            raise StochasticModuleError(
                f'{message}. The test is marked eval_mode="strict", so this fails it.'
            )
        message += "; pytest-determinism switched it to eval mode for this test."
        if self._warn:
            filename, lineno = _outside_frame()
            warnings.warn_explicit(
                DeterminismWarning(message), DeterminismWarning, filename, lineno
            )

    def switch_to_eval(self, module: Any) -> None:
        """Put ``module`` and its submodules in eval mode, remembering their flags."""
        for sub in module.modules():
            self._saved.setdefault(id(sub), (sub, sub.training))
        self._roots.append(module)
        module.eval()

    def restore(self) -> None:
        """Remove the hook and give every module back the ``training`` flag it had."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for module, training in self._saved.values():
            module.training = training
        self._saved.clear()
        self._roots.clear()
