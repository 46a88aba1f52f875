"""Named registries: ``register(name, entry)`` and lookup by name with an error that helps.

One class serves every pluggable part (mechanisms, click judges, bid policies, classic auctions),
so adding one is a single ``register`` call and a wrong name always gets the same kind of message.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, where: str = "", aliases: Mapping[str, str] | None = None,
                 error: type[Exception] = ValueError):
        self.kind = kind            # e.g. "mechanism", used in messages
        self.where = where          # where the name is set, e.g. "config: market.mechanism"
        self.aliases = dict(aliases or {})
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.aliases

    def canonical(self, name: str) -> str:
        """The registered name for `name` (or its alias); raises `error` naming the choices."""
        name = self.aliases.get(name, name)
        if name in self._entries:
            return name
        close = difflib.get_close_matches(str(name), [*self._entries, *self.aliases], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        aliases = f"; aliases: {', '.join(sorted(self.aliases))}" if self.aliases else ""
        where = f" ({self.where})" if self.where else ""
        raise self.error(f"unknown {self.kind} {name!r}{hint}; choose one of "
                         f"{', '.join(self.names())}{aliases}{where}")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]
