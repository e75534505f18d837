"""The plugin's one pair of global torch module hooks, shared by eval mode, the probe and tracing.

Two kinds of subscriber listen here. Every-call subscribers (the module tracer of
:mod:`pytest_determinism.nondeterminism.trace`) hear every module call. Outermost
subscribers (the eval-mode guard of :mod:`pytest_determinism.state.evalmode`, the seed
probe's watcher) hear only when an outermost call, one made while no other is running,
starts and ends. While only outermost subscribers listen, the global hooks are taken out of
torch's dicts for the length of each outermost call and a pair of hooks on that one module
hears its end: torch runs a module call without hooks on a fast path, and the slow path
with its hook loops costs several microseconds a call, so a passing check would otherwise pay
for every module call of every run. That is what makes a passing test under
``--determinism`` cost its runs and nothing more.

The pair is registered here once instead of afresh per subscriber, for three reasons that all
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
  while anyone subscribes.

Nothing is registered with torch while nobody subscribes, so unmarked tests run as if the
plugin were not there. One outermost call is followed at a time: while it runs without the
global hooks, calls made on other threads are not heard.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pytest_determinism.state.module_tree import registered_modules

__all__ = [
    "PostHook",
    "PreHook",
    "subscribe",
    "subscribe_outermost",
    "unsubscribe",
    "unsubscribe_outermost",
    "unwatch_compiled",
    "watch_compiled",
]

#: ``(module, args)``, as a global forward pre-hook gets them.
PreHook = Callable[[Any, tuple[Any, ...]], None]
#: ``(module, args, kwargs, result)`` after a normal return, ``(module, args, result)`` when
#: the forward raised, as an always-called global forward hook with kwargs gets them.
PostHook = Callable[..., None]

# Subscribers in subscription order. At an outermost call the outermost ones hear its start
# before the every-call ones (eval mode switches a model before the tracer notes its
# training flags) and its end after them.
_pre: list[PreHook] = []
_post: list[PostHook] = []
_enter: list[PreHook] = []
_exit: list[PostHook] = []
# torch's keys of the two hooks once registered, kept for re-attaching under the same keys.
_keys: tuple[int, int] | None = None
# Someone subscribes (the compile patch and the warning filter are in place) ...
_attached = False
# ... and the global hooks are in torch's dicts (not while an outermost call runs without).
_registered = False
_warning_filter: tuple[Any, ...] | None = None
_original_compile: Any = None
_is_compiling: Callable[[], bool] = lambda: False  # noqa: E731 - replaced once torch is seen

# The outermost call now running: its module, how deep it is in calls of itself, the args
# tuple it started with, and the module whose own hook dicts hold the pair that hears its
# end while the global hooks are out.
_outer: Any = None
_depth = 0
_entry_args: tuple[Any, ...] | None = None
_local: Any = None
# The key of that pair in a module's hook dicts: the id of a handle torch handed out once,
# which it never hands out again. The pair goes into the dicts directly, as
# register_forward_hook would put it, without two handles made and removed per call.
_local_key: int | None = None

# The text of torch's warning in OptimizedModule.__call__ when any global hook exists.
_OPTIMIZED_MODULE_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def _dispatch_pre(module: Any, args: tuple[Any, ...]) -> None:
    # Dynamo inlines this function into every graph it compiles while attached: returning
    # before anything else leaves nothing of it in the graph.
    global _depth, _local
    if _is_compiling():
        return
    if _outer is None:
        if _open(module, args):
            key = _local_key if _local_key is not None else _reserve_key()
            module._forward_pre_hooks[key] = _local_pre
            module._forward_hooks[key] = _local_post
            module._forward_hooks_always_called[key] = True
            _local = module
    elif module is _outer:
        _depth += 1
    for hook in tuple(_pre):
        hook(module, args)


def _dispatch_post(module: Any, args: tuple[Any, ...], *rest: Any) -> None:
    if _is_compiling():
        return
    for hook in tuple(_post):
        hook(module, args, *rest)
    if module is _outer:
        _returned(module, args, rest)


def _local_pre(module: Any, args: tuple[Any, ...]) -> None:
    # Hears the outermost module's own nested calls (recursion) while the global hooks are
    # out. torch collects a call's pre-hooks before running them, so this one, registered
    # during the outermost call's global pre-hook, is not run for that call; the identity
    # test keeps the count right should that ever change.
    global _depth, _entry_args
    if args is _entry_args:
        _entry_args = None
        return
    _depth += 1


def _local_post(module: Any, args: tuple[Any, ...], *rest: Any) -> None:
    _returned(module, args, rest)


def _open(module: Any, args: tuple[Any, ...]) -> bool:
    """An outermost call starts: tell the outermost subscribers, and take the global hooks
    out for its length unless an every-call subscriber listens. Whether they were taken out."""
    global _outer, _depth, _entry_args
    _outer, _depth, _entry_args = module, 1, args
    # A subscriber that raises (eval mode's strict error) leaves the global hooks in, so
    # torch's always-called post-hook still closes the call.
    for hook in tuple(_enter):
        hook(module, args)
    if _pre or _post:
        return False
    _unregister()
    return True


def _returned(module: Any, args: tuple[Any, ...], rest: tuple[Any, ...]) -> None:
    global _depth
    _depth -= 1
    if _depth:
        return
    _close()
    for hook in tuple(_exit):
        hook(module, args, *rest)


def _close() -> None:
    """No outermost call runs any more: drop its hooks, put the global ones back."""
    global _outer, _depth, _entry_args, _local
    _outer, _depth, _entry_args = None, 0, None
    if _local is not None:
        for hooks in (
            _local._forward_pre_hooks,
            _local._forward_hooks,
            _local._forward_hooks_always_called,
        ):
            hooks.pop(_local_key, None)
        _local = None
    if _attached and not _registered:
        _register()


def _reserve_key() -> int:
    global _local_key
    # torch's hook dicts are OrderedDicts: a handle keeps a weak reference to its dict.
    handle = sys.modules["torch"].utils.hooks.RemovableHandle(OrderedDict())
    _local_key = int(handle.id)
    return _local_key


def _register() -> None:
    global _keys, _registered
    hooks = sys.modules["torch"].nn.modules.module
    if _keys is None or not _reattach(hooks, _keys):
        pre = hooks.register_module_forward_pre_hook(_dispatch_pre)
        post = hooks.register_module_forward_hook(
            _dispatch_post, with_kwargs=True, always_call=True
        )
        _keys = (pre.id, post.id)
    _registered = True


def _unregister() -> None:
    global _registered
    hooks = sys.modules["torch"].nn.modules.module
    if _keys is not None:
        pre, post = _keys
        hooks._global_forward_pre_hooks.pop(pre, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_hooks_with_kwargs",
            "_global_forward_hooks_always_called",
        ):
            getattr(hooks, name).pop(post, None)
    _registered = False


def _attach(torch: Any) -> None:
    global _attached, _warning_filter, _is_compiling
    _is_compiling = torch.compiler.is_compiling
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
    _unregister()
    _attached = False
    _unpatch_compile(torch)
    if _warning_filter is not None:
        # pytest's per-test warning capture may already have put its own list back.
        filters: list[Any] = warnings.filters  # type: ignore[assignment]
        if _warning_filter in filters:
            filters.remove(_warning_filter)
            getattr(warnings, "_filters_mutated", lambda: None)()
        _warning_filter = None


def _resubscribed() -> None:
    # Subscribers change between calls (a run starts or ends), or after a forward left by a
    # BaseException that skipped torch's always-called hooks: whatever outermost call was
    # being followed is forgotten, and the global hooks are in exactly while anyone listens.
    torch = sys.modules["torch"]
    if not (_pre or _post or _enter or _exit):
        if _attached:
            _detach(torch)
            unwatch_compiled()
        _close()
        return
    if not _attached:
        _attach(torch)
    _close()


def subscribe(pre: PreHook | None = None, post: PostHook | None = None) -> None:
    """Have ``pre`` / ``post`` called at every module call until :func:`unsubscribe`.

    torch must be imported. The global hooks are attached with the first subscriber.
    """
    if pre is not None:
        _pre.append(pre)
    if post is not None:
        _post.append(post)
    _resubscribed()


def unsubscribe(pre: PreHook | None = None, post: PostHook | None = None) -> None:
    """Stop calling ``pre`` / ``post``; the global hooks go with the last subscriber."""
    if pre is not None and pre in _pre:
        _pre.remove(pre)
    if post is not None and post in _post:
        _post.remove(post)
    _resubscribed()


def subscribe_outermost(enter: PreHook | None = None, exit: PostHook | None = None) -> None:
    """Have ``enter`` called when an outermost module call starts (before its forward
    runs) and ``exit`` when it has returned or raised, until :func:`unsubscribe_outermost`.

    Calls nested inside an outermost one are not heard, and cost nothing while no
    every-call subscriber listens. torch must be imported.
    """
    if enter is not None:
        _enter.append(enter)
    if exit is not None:
        _exit.append(exit)
    _resubscribed()


def unsubscribe_outermost(enter: PreHook | None = None, exit: PostHook | None = None) -> None:
    """Stop calling ``enter`` / ``exit``; the global hooks go with the last subscriber."""
    if enter is not None and enter in _enter:
        _enter.remove(enter)
    if exit is not None and exit in _exit:
        _exit.remove(exit)
    _resubscribed()


# Modules compiled in place whose compiled call is wrapped: id -> (module, original).
_watched: dict[int, tuple[Any, Any]] = {}


def _boundary(module: Any, compiled: Any) -> Callable[..., Any]:
    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        # What torch does for an OptimizedModule: the hooks run outside the compiled frame.
        global _depth
        if not _attached or _is_compiling():
            return compiled(*args, **kwargs)
        if _outer is None:
            try:
                _open(module, args)
            except BaseException:
                _close()
                raise
        elif module is _outer:
            _depth += 1
        for hook in tuple(_pre):
            hook(module, args)
        try:
            result = compiled(*args, **kwargs)
        except BaseException:
            for hook in tuple(_post):
                hook(module, args, None)
            if module is _outer:
                _returned(module, args, (None,))
            raise
        for hook in tuple(_post):
            hook(module, args, kwargs, result)
        if module is _outer:
            _returned(module, args, (kwargs, result))
        return result

    call.__determinism_boundary__ = True  # type: ignore[attr-defined]
    return call


def watch_compiled(modules: Any) -> None:
    """Wrap the compiled call of each module in ``modules`` (and their submodules) that was
    compiled in place with ``module.compile()``, so the subscribers see it at its boundary.

    Undone by :func:`unwatch_compiled`, and when the last subscriber leaves.
    """
    for root in modules:
        for module in registered_modules(root):
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
