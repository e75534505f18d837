"""Which parts of a checked value ``exclude=`` leaves out.

A part is named by its key path relative to the value checked (``"cache.0.key"``, never
with the check's name in front). An entry leaves a part out when it is the part's path or
a prefix of it on whole components (``"cache"`` leaves out ``"cache.0.key"``, not
``"cache_extra"``), or an ``fnmatch`` pattern matching the path of the part or of one of
its parents (``"*.key"``, ``"hidden_states.?"``). A pattern starting with ``*.`` also
matches at the top: ``"*.attentions"`` leaves out ``attentions`` wherever it is.

The walk asks about each part before looking inside it, so a part that could not be
flattened (a string, a list of labels) can still be left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

__all__ = ["Exclusion"]


class Exclusion:
    """The entries of one ``exclude=`` argument, and which of them matched something."""

    def __init__(self, entries: Sequence[str]) -> None:
        # A repeated entry is one entry: it is named once when it matches nothing.
        self.entries = tuple(dict.fromkeys(entries))
        self._used: set[str] = set()

    @classmethod
    def parse(cls, exclude: object) -> Exclusion:
        """Validate an ``exclude=`` argument: ``None``, a key path or pattern, or a list or
        tuple of them. Raises ``TypeError`` or ``ValueError`` naming what is wrong."""
        if exclude is None:
            return cls(())
        entries = [exclude] if isinstance(exclude, str) else exclude
        if not isinstance(entries, list | tuple) or not all(
            isinstance(entry, str) for entry in entries
        ):
            raise TypeError(
                "golden_tensor.check: exclude must be a key path or pattern (a string) or a "
                f'list of them, got {_describe(exclude)}; e.g. exclude="cache" or '
                'exclude=["cache", "*.attentions"]'
            )
        for entry in entries:
            if not entry:
                raise ValueError(
                    "golden_tensor.check: exclude holds an empty key path; name the part to "
                    'leave out, e.g. exclude="cache"'
                )
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def excludes(self, path: str) -> bool:
        """Whether the part at ``path`` (relative to the value) is left out; notes which
        entries matched it."""
        hits = [entry for entry in self.entries if _matches(entry, path)]
        self._used.update(hits)
        return bool(hits)

    def unmatched(self) -> list[str]:
        """The entries that matched no part of the value walked, in the order given."""
        return [entry for entry in self.entries if entry not in self._used]


def _matches(entry: str, path: str) -> bool:
    if path == entry or path.startswith(f"{entry}."):
        return True
    if fnmatchcase(path, entry):
        return True
    return entry.startswith("*.") and fnmatchcase(path, entry[2:])


def _describe(value: object) -> str:
    if isinstance(value, list | tuple):
        odd = next(entry for entry in value if not isinstance(entry, str))
        return f"a {type(value).__name__} holding {type(odd).__name__} {odd!r}"
    return f"{type(value).__name__} {value!r}"
