"""pytest-xdist support: the controller merges what every worker learned.

Registered only when pytest-xdist is installed. Workers send their ``SessionRecord`` in
``workeroutput``; a worker that went down with an error or without a record makes the
session's record incomplete, and an incomplete record never deletes a golden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_determinism.session import PluginSession

__all__ = ["WORKER_OUTPUT_KEY", "XdistHooks"]

WORKER_OUTPUT_KEY = "pytest_determinism"


class XdistHooks:
    """The controller's side of the worker reports."""

    def __init__(self, plugin_session: PluginSession) -> None:
        self._session = plugin_session

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Merge the record a worker sent; note a worker that sent none."""
        output = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if error or output is None:
            self._session.worker_reports_complete = False
            return
        self._session.record.merge(output)
