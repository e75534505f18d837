"""The plugin's one pair of global torch module hooks, shared by eval mode and tracing.

The eval-mode guard (:mod:`pytest_determinism.state.evalmode`) and the module tracer
(:mod:`pytest_determinism.nondeterminism.trace`) both need to see every module call. They
subscribe here instead of registering global hooks of their own, for three reasons that all
come from ``torch.compile``:

- Dynamo traces a module's ``_call_impl``, global hooks included, into the graph it
  compiles. The hooks here return at once while Dynamo traces (``torch.compiler.
  is_compiling()``), so nothing of the plugin gets into a graph: no compilation error
  (Dynamo cannot trace ``threading.get_ident``, warnings or hashing), no graph break, and the
  compiled code is the code the user would get without the plugin.
- Dynamo guards on the keys of torch's global hook dicts. Registering fresh hooks for every
  test or every run would change those keys and recompile every compiled model each time
  (and, past ``torch._dynamo.config.recompile_limit``, fall back to eager with a warning).
  The hooks here are registered once and put back under the same keys whenever they are
  needed again, so a compiled model is compiled once with them and once without.
- A compiled module is seen at its boundary: ``torch.compile(module)`` returns an
  ``OptimizedModule`` whose own call runs outside the graph, so the hooks see it; a module
  compiled in place (``module.compile()``) runs its hooks only inside the graph, so while a
  subscriber is active its compiled call is wrapped (:func:`watch_compiled`) to tell the
  subscribers about it from outside. torch's warning that global hooks fire an extra time for
  an ``OptimizedModule`` is about these hooks seeing exactly that boundary, and is silenced
  while they are attached.

Nothing is registered with torch while nobody subscribes, so unmarked tests run as if the
plugin were not there.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = [
    "PostHook",
    "PreHook",
    "subscribe",
    "unsubscribe",
    "unwatch_compiled",
    "watch_compiled",
]

#: ``(module, args)``, as a global forward pre-hook gets them.
PreHook = Callable[[Any, tuple[Any, ...]], None]
#: ``(module, args, kwargs, result)`` after a normal return, ``(module, args, result)`` when
#: the forward raised, as an always-called global forward hook with kwargs gets them.
PostHook = Callable[..., None]

# Subscribers in subscription order (eval mode switches a module before the tracer notes
# its training flag).
_pre: list[PreHook] = []
_post: list[PostHook] = []
# torch's keys of the two hooks once registered, kept for re-attaching under the same keys.
_keys: tuple[int, int] | None = None
_attached = False
_warning_filter: tuple[Any, ...] | None = None
_original_compile: Any = None
_is_compiling: Callable[[], bool] = lambda: False  # noqa: E731 - replaced once torch is seen

# The text of torch's warning in OptimizedModule.__call__ when any global hook exists.
_OPTIMIZED_MODULE_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def _dispatch_pre(module: Any, args: tuple[Any, ...]) -> None:
    # Dynamo inlines this function into every graph it compiles while attached: returning
    # before anything else leaves nothing of it in the graph.
    if _is_compiling():
        return
    for hook in tuple(_pre):
        hook(module, args)


def _dispatch_post(module: Any, args: tuple[Any, ...], *rest: Any) -> None:
    if _is_compiling():
        return
    for hook in tuple(_post):
        hook(module, args, *rest)


def _attach(torch: Any) -> None:
    global _keys, _attached, _warning_filter, _is_compiling
    _is_compiling = torch.compiler.is_compiling
    hooks = torch.nn.modules.module
    if _keys is None or not _reattach(hooks, _keys):
        pre = hooks.register_module_forward_pre_hook(_dispatch_pre)
        post = hooks.register_module_forward_hook(
            _dispatch_post, with_kwargs=True, always_call=True
        )
        _keys = (pre.id, post.id)
    _attached = True
    _patch_compile(torch)
    warnings.filterwarnings("ignore", message=_OPTIMIZED_MODULE_WARNING, category=UserWarning)
    _warning_filter = warnings.filters[0]


def _reattach(hooks: Any, keys: tuple[int, int]) -> bool:
    # The registration functions always hand out new keys; the dicts they fill are torch's
    # documented-by-use globals. Where they are missing, register afresh (and recompile).
    names = (
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_forward_hooks_with_kwargs",
        "_global_forward_hooks_always_called",
    )
    if not all(isinstance(getattr(hooks, name, None), dict) for name in names):
        return False
    pre, post = keys
    hooks._global_forward_pre_hooks[pre] = _dispatch_pre
    hooks._global_forward_hooks[post] = _dispatch_post
    hooks._global_forward_hooks_with_kwargs[post] = True
    hooks._global_forward_hooks_always_called[post] = True
    return True


def _patch_compile(torch: Any) -> None:
    # A module compiled in place while attached (in a fixture or the test body) is watched
    # from its compile() call on; the class attribute is put back on detach.
    global _original_compile
    module_class = torch.nn.Module
    original = module_class.__dict__.get("compile")
    if original is None or _original_compile is not None:
        return
    _original_compile = original

    @functools.wraps(original)
    def compile(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _attached:
            watch_compiled((self,))

    module_class.compile = compile


def _unpatch_compile(torch: Any) -> None:
    global _original_compile
    if _original_compile is not None:
        torch.nn.Module.compile = _original_compile
        _original_compile = None


def _detach(torch: Any) -> None:
    global _attached, _warning_filter
    hooks = torch.nn.modules.module
    if _keys is not None:
        pre, post = _keys
        hooks._global_forward_pre_hooks.pop(pre, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_hooks_with_kwargs",
            "_global_forward_hooks_always_called",
        ):
            getattr(hooks, name).pop(post, None)
    _attached = False
    _unpatch_compile(torch)
    if _warning_filter is not None:
        # pytest's per-test warning capture may already have put its own list back.
        filters: list[Any] = warnings.filters  # type: ignore[assignment]
        if _warning_filter in filters:
            filters.remove(_warning_filter)
            getattr(warnings, "_filters_mutated", lambda: None)()
        _warning_filter = None


def subscribe(pre: PreHook | None = None, post: PostHook | None = None) -> None:
    """Have ``pre`` / ``post`` called at every module call until :func:`unsubscribe`.

    torch must be imported. The global hooks are attached with the first subscriber.
    """
    torch = sys.modules["torch"]
    if pre is not None:
        _pre.append(pre)
    if post is not None:
        _post.append(post)
    if not _attached:
        _attach(torch)


def unsubscribe(pre: PreHook | None = None, post: PostHook | None = None) -> None:
    """Stop calling ``pre`` / ``post``; the global hooks go with the last subscriber."""
    if pre is not None and pre in _pre:
        _pre.remove(pre)
    if post is not None and post in _post:
        _post.remove(post)
    if _attached and not _pre and not _post:
        _detach(sys.modules["torch"])
        unwatch_compiled()


# Modules compiled in place whose compiled call is wrapped: id -> (module, original).
_watched: dict[int, tuple[Any, Any]] = {}


def _boundary(module: Any, compiled: Any) -> Callable[..., Any]:
    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        # What torch does for an OptimizedModule: the hooks run outside the compiled frame.
        if not _attached or _is_compiling():
            return compiled(*args, **kwargs)
        for hook in tuple(_pre):
            hook(module, args)
        try:
            result = compiled(*args, **kwargs)
        except BaseException:
            for hook in tuple(_post):
                hook(module, args, None)
            raise
        for hook in tuple(_post):
            hook(module, args, kwargs, result)
        return result

    call.__determinism_boundary__ = True  # type: ignore[attr-defined]
    return call


def watch_compiled(modules: Any) -> None:
    """Wrap the compiled call of each module in ``modules`` (and their submodules) that was
    compiled in place with ``module.compile()``, so the subscribers see it at its boundary.

    Undone by :func:`unwatch_compiled`, and when the last subscriber leaves.
    """
    for root in modules:
        for module in root.modules():
            compiled = module.__dict__.get("_compiled_call_impl")
            if compiled is None or getattr(compiled, "__determinism_boundary__", False):
                continue
            _watched[id(module)] = (module, compiled)
            module._compiled_call_impl = _boundary(module, compiled)


def unwatch_compiled() -> None:
    """Give every watched module its own compiled call back."""
    for module, compiled in _watched.values():
        if getattr(module.__dict__.get("_compiled_call_impl"), "__determinism_boundary__", False):
            module._compiled_call_impl = compiled
    _watched.clear()
