"""Every module registered under a torch module, found at the cost of the walk alone.

``Module.modules()`` builds the qualified name of every submodule on the way, through one
generator per module: several times the cost of the walk itself, which the plugin makes at
every outermost call of a checked test (is anything in training mode?) and at the start of
every marked test (is anything compiled in place?).
"""

from __future__ import annotations

from typing import Any

__all__ = ["registered_modules"]


def registered_modules(root: Any) -> list[Any]:
    """``root`` and every module registered under it, parents first.

    Unlike ``root.modules()``, a module registered twice (a layer shared by two parents) is
    listed twice: finding each once would cost a third more, and every use here is
    indifferent to it. A module registered under itself is not supported, as torch's own
    ``train()`` recurses forever on one.
    """
    found = [root]
    append = found.append
    # The list grows while it is read: every module found is looked into once.
    for module in found:
        for sub in module._modules.values():
            # ``_modules`` holds None for a submodule slot left empty.
            if sub is not None:
                append(sub)
    return found
