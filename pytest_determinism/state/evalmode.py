"""Running every torch module a test calls in eval mode, and naming the ones that were not.

A global forward pre-hook sees every outermost module call (one made while no other runs),
also inside third-party code. Before its forward runs, the module and every submodule
registered under it are looked at: a module found in training mode is switched to eval mode
(with all its submodules); if it holds stochastic layers in training mode (dropout, DropPath
/ stochastic depth, BatchNorm, ...), the user's own inference code forgot ``model.eval()``
and gives a different answer at every call outside the test, so it is named in a
``DeterminismWarning`` (or fails the test in strict mode). Every ``training`` flag changed
is restored when the test ends.

Nested calls are not heard (so they cost nothing, see :mod:`pytest_determinism.state.hooks`):
a module that is not registered under the module being called (kept in a plain list or
dict, or held outside the model) and called from inside its forward keeps its mode.
"""

from __future__ import annotations

import os
import sys
import warnings
from operator import attrgetter
from typing import Any

from pytest_determinism.errors import DeterminismWarning, StochasticModuleError
from pytest_determinism.state import hooks
from pytest_determinism.state.module_tree import registered_modules

__all__ = [
    "BATCH_STATISTICS",
    "RANDOM_DRAW",
    "EvalModeGuard",
    "is_stochastic",
    "layer_kind",
    "stochastic_layers",
    "train_mode_message",
]

# Layers that change their output from call to call in training mode, recognised by class
# name so third-party implementations (timm's DropPath, torchvision's StochasticDepth,
# transformers' ConvNextDropPath, ...) are found without importing their libraries.
_STOCHASTIC_NAME_PARTS = ("droppath", "stochasticdepth", "dropblock", "dropconnect", "dropout")
# Where those implementations keep their drop probability: a layer that drops nothing
# (timm's ViTs build Dropout(p=0.0) and DropPath(0.0) by default) is not stochastic.
_DROP_PROBABILITY_NAMES = ("p", "drop_prob", "drop_rate", "drop_path_rate")

#: What each kind of layer does in training mode, for the warning and the strict error.
RANDOM_DRAW = "random"
BATCH_STATISTICS = "batchnorm"


def _drops_nothing(module: Any) -> bool:
    for name in _DROP_PROBABILITY_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value == 0
    return False


def layer_kind(torch: Any, module: Any) -> str | None:
    """What ``module`` does differently in training mode: :data:`RANDOM_DRAW` (dropout,
    stochastic depth: random numbers), :data:`BATCH_STATISTICS` (batch normalisation: the
    batch's own statistics, running statistics updated), or ``None`` (nothing)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return BATCH_STATISTICS
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return None if _drops_nothing(module) else RANDOM_DRAW
    name = type(module).__name__.lower().replace("_", "")
    if any(part in name for part in _STOCHASTIC_NAME_PARTS):
        return None if _drops_nothing(module) else RANDOM_DRAW
    return None


def is_stochastic(torch: Any, module: Any) -> bool:
    """Whether ``module`` acts differently in training mode: it draws random numbers
    (dropout, stochastic depth, with a drop probability above 0) or normalises with batch
    statistics (BatchNorm). By type or class name."""
    return layer_kind(torch, module) is not None


def stochastic_layers(module: Any) -> list[tuple[str, str, str]]:
    """``(qualified name, class name, kind)`` of each stochastic layer in training mode in
    ``module`` (in the module ``torch.compile`` wrapped, for a compiled one); ``kind`` is
    :data:`RANDOM_DRAW` or :data:`BATCH_STATISTICS`."""
    torch = sys.modules["torch"]
    found = []
    for name, sub in _compiled_inner(module).named_modules():
        kind = layer_kind(torch, sub) if sub.training else None
        if kind is not None:
            found.append((name or type(sub).__name__, type(sub).__name__, kind))
    return found


def _compiled_inner(module: Any) -> Any:
    """The module ``torch.compile(module)`` wrapped, or ``module`` itself."""
    cls = type(module)
    if cls.__name__ == "OptimizedModule" and cls.__module__.startswith("torch._dynamo"):
        return module._orig_mod
    return module


_training = attrgetter("training")


def _any_training(module: Any) -> bool:
    """Whether ``module`` or a submodule registered under it is in training mode."""
    # map with attrgetter: a generator expression costs a tenth more on this hot path.
    return any(map(_training, registered_modules(module)))


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


def _named(layers: list[tuple[str, str, str]]) -> str:
    shown = ", ".join(f"{qual} ({cls})" for qual, cls, _ in layers[:8])
    return shown + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")


def train_mode_message(module: Any, name: str, layers: list[tuple[str, str, str]]) -> str:
    """The text naming a module called in training mode and its stochastic layers
    (:func:`stochastic_layers`), saying what each kind of layer does in training mode."""
    inner = _compiled_inner(module)
    compiled = inner is not module or module.__dict__.get("_compiled_call_impl") is not None
    cls = type(inner).__name__ + (" (compiled)" if compiled else "")
    who = cls if name == type(module).__name__ else f"{name} ({cls})"
    random_draws = [layer for layer in layers if layer[2] == RANDOM_DRAW]
    batch_statistics = [layer for layer in layers if layer[2] == BATCH_STATISTICS]
    # Which layers each sentence is about only needs saying when both kinds are present.
    both = bool(random_draws and batch_statistics)
    parts = [
        f"{who} was called in training mode, where these layers act differently from eval "
        f"mode: {_named(layers)}."
    ]
    if random_draws:
        which = f" ({_named(random_draws)})" if both else ""
        parts.append(
            f"Dropout and stochastic depth{which} draw random numbers in training mode, so "
            "two calls on the same input give different outputs."
        )
    if batch_statistics:
        which = f" ({_named(batch_statistics)})" if both else ""
        parts.append(
            f"Batch normalisation{which} draws no random numbers, but in training mode it "
            "normalises with the batch's own statistics, so one sample's output depends on "
            "the others in its batch, and it updates its running statistics on every call, "
            "a state change even under torch.no_grad()."
        )
    parts.append(
        "Call model.eval() in your own inference code before calling the model (and use "
        "torch.no_grad() or torch.inference_mode())"
    )
    return " ".join(parts)


class EvalModeGuard:
    """Switches modules to eval mode for one test and puts every flag back afterwards."""

    def __init__(self, *, strict: bool, warn: bool = True) -> None:
        self._strict = strict
        self._warn = warn
        self._saved: dict[int, tuple[Any, bool]] = {}
        self._roots: list[Any] = []
        self._handle: Any = None
        # What the hook switched (not what the test asked for through determinism.eval):
        # qualified name -> its stochastic layers, for the note on a failed test.
        self._switched: dict[str, list[tuple[str, str, str]]] = {}

    def install(self) -> None:
        """Listen to outermost module calls (torch must be imported)."""
        hooks.subscribe_outermost(enter=self._enter)
        self._handle = self._enter

    def _qualified_name(self, module: Any) -> str:
        for root in self._roots:
            for name, sub in root.named_modules():
                if sub is module and name:
                    return f"{type(root).__name__}.{name}"
        return type(module).__name__

    def _enter(self, module: Any, args: Any) -> None:
        # The hot path: every outermost module call of the test lands here.
        __tracebackhide__ = True
        if module.training:
            self._switch(module, self._qualified_name(module))
        elif _any_training(module):
            # A submodule put back in training mode (model.encoder.train()) under a model
            # in eval mode; after a switch its own submodules are no longer training.
            root = _compiled_inner(module)
            prefix = type(root).__name__
            for name, sub in root.named_modules():
                if sub.training:
                    self._switch(sub, f"{prefix}.{name}")

    def _switch(self, module: Any, name: str) -> None:
        __tracebackhide__ = True
        layers = stochastic_layers(module)
        name = self._qualified_name(module)
        self.switch_to_eval(module)
        self._switched.setdefault(name, layers)
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
            hooks.unsubscribe_outermost(enter=self._handle)
            self._handle = None
        for module, training in self._saved.values():
            module.training = training
        self._saved.clear()
        self._roots.clear()
        self._switched.clear()

    def failure_note(self) -> str | None:
        """For a failed test: which modules the hook switched to eval mode, and the setting
        for a test that checks training behaviour; ``None`` when none was switched."""
        if not self._switched:
            return None
        shown = []
        for name, layers in list(self._switched.items())[:8]:
            shown.append(f"{name} (with {_named(layers)})" if layers else name)
        more = len(self._switched) - len(shown)
        return (
            "pytest-determinism switched these modules from training to eval mode during this "
            f"test: {', '.join(shown)}{f' and {more} more' if more > 0 else ''}. In eval mode "
            "dropout and stochastic depth drop nothing and batch normalisation uses its running "
            "statistics. If the test checks training behaviour (a layer that should drop in "
            "train mode, batch statistics), mark it "
            "@pytest.mark.deterministic(eval_mode=False)."
        )
