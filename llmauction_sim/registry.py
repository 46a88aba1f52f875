"""Named registries: ``register(name, entry, description)`` and lookup by name with an error that helps.

One class serves every pluggable part (mechanisms, click judges, bid policies, classic auctions),
so adding one is a single ``register`` call and a wrong name always gets the same kind of message.
A registry with an entry-point `group` also finds the entries other installed distributions
declare under that group (``[project.entry-points."llmauction_sim.mechanisms"]``), as Gymnasium
finds environment plugins: the names on the first lookup or listing, each object when it is used.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llmauction_sim.config import ConfigError, entry_settings, plugin_tables_of

T = TypeVar("T")

class PluginError(ImportError):
    """An installed plugin's entry point could not be loaded or clashes with a registered name."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, a one-line description, the entry's own config
    class (a dataclass, or None) and where it came from (a plugin's distribution, else the module
    of the object), for messages."""

    name: str
    value: T
    description: str
    config_class: type | None = None
    source: str = ""


def _own_description(obj: Any) -> str:
    """The object's `description` attribute, else the first line of its docstring."""
    text = getattr(obj, "description", None)
    if isinstance(text, str) and text.strip():
        return text.strip()
    if not (isinstance(obj, type) or inspect.isroutine(obj)):
        return ""  # an instance's docstring is its type's, about the type
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _origin(obj: Any) -> str:
    if isinstance(obj, type) or inspect.isroutine(obj):
        return f"module {obj.__module__}"
    return "an earlier register() call"


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "an unknown distribution"


class Registry(Generic[T]):
    """`kind` names the things in messages ("mechanism"); `where` says where a name is set
    ("config: market.mechanism"); `aliases` maps short names to registered ones (a dict passed in
    is shared, so two registries can use one alias table); `group` is the entry-point group of
    plugins (None: no plugins)."""

    def __init__(self, kind: str, where: str = "", aliases: Mapping[str, str] | None = None,
                 error: type[Exception] = ValueError, group: str | None = None):
        self.kind = kind
        self.where = where
        self.aliases = aliases if isinstance(aliases, dict) else dict(aliases or {})
        self.error = error
        self.group = group
        self._entries: dict[str, Entry[T]] = {}
        self._pending: dict[str, importlib.metadata.EntryPoint] = {}  # found, not loaded yet
        self._discovered = group is None

    # --- registering ---------------------------------------------------------------------------
    def register(self, name: str, entry: T, description: str | None = None, *,
                 config_class: type | None = None, replace: bool = False,
                 source: str | None = None) -> None:
        """Add `entry` under `name`. `description` is one line (default: the entry's
        `description` attribute or the first line of its docstring); `config_class` (default: the
        entry's `config_class` attribute) is the dataclass of the entry's own settings, or None.
        A taken name is refused unless `replace` is True."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding "
                             f"spaces, not {name!r}")
        if not replace and (name in self._entries or name in self._pending):
            taken = self._entries.get(name)
            by = taken.source if taken is not None else _distribution(self._pending[name])
            raise ValueError(f"{self.kind} {name!r} is already registered (by {by}); pick "
                             f"another name, or pass replace=True to register(...) to replace "
                             f"it, or unregister({name!r}) first")
        if name in self.aliases:
            raise ValueError(f"{name!r} is an alias of {self.kind} {self.aliases[name]!r}; pick "
                             "another name")
        description = _own_description(entry) if description is None else description.strip()
        if config_class is None:
            config_class = getattr(entry, "config_class", None)
        if "\n" in description:
            raise ValueError(f"the description of {self.kind} {name!r} must be one line")
        if config_class is not None and not (isinstance(config_class, type)
                                             and dataclasses.is_dataclass(config_class)):
            raise TypeError(f"config_class of {self.kind} {name!r} must be a dataclass, not "
                            f"{config_class!r}")
        self._pending.pop(name, None)
        self._entries[name] = Entry(name, entry, description, config_class,
                                    source or _origin(entry))

    def unregister(self, name: str) -> None:
        """Remove `name` (no error when it is not registered)."""
        self._entries.pop(name, None)
        self._pending.pop(name, None)

    # --- plugins -------------------------------------------------------------------------------
    def _discover(self) -> None:
        """Note every entry point of `group` by name, once; loading waits until one is used."""
        if self._discovered:
            return
        self._discovered = True
        seen: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            if seen.get(ep.name) == ep.value:  # one distribution visible twice on sys.path
                continue
            seen[ep.name] = ep.value
            taken = self._entries.get(ep.name)
            if taken is not None and f"{getattr(taken.value, '__module__', '')}:" \
                    f"{getattr(taken.value, '__qualname__', '')}" == ep.value:
                continue  # the plugin's module was imported already and registered itself
            if taken is not None or ep.name in self._pending:
                by = taken.source if taken is not None else _distribution(self._pending[ep.name])
                raise PluginError(
                    f"{self.kind} {ep.name!r} of distribution {_distribution(ep)} (entry point "
                    f"'{ep.name} = {ep.value}' in group {self.group!r}) clashes with the one "
                    f"registered by {by}; rename the entry point or uninstall one of them")
            self._pending[ep.name] = ep

    def _load(self, name: str) -> Entry[T]:
        ep = self._pending[name]
        try:
            value = ep.load()
        except Exception as exc:
            raise PluginError(
                f"could not load {self.kind} {name!r} from distribution {_distribution(ep)} "
                f"(entry point '{ep.name} = {ep.value}' in group {self.group!r}): "
                f"{type(exc).__name__}: {exc}; fix or reinstall that package, or uninstall it"
            ) from exc
        if name in self._entries:  # loading the module registered it under this name
            self._pending.pop(name, None)
            return self._entries[name]
        self.register(name, value, replace=True, source=_distribution(ep))
        return self._entries[name]

    # --- lookup --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, plugins included (listing loads no plugin)."""
        self._discover()
        return sorted({*self._entries, *self._pending})

    def describe(self) -> dict[str, str]:
        """{name: one-line description}, sorted by name (loads every plugin)."""
        return {name: self.entry(name).description for name in self.names()}

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries or name in self._pending or name in self.aliases

    def canonical(self, name: str) -> str:
        """The registered name for `name` (or its alias); raises `error` naming the choices."""
        self._discover()
        name = self.aliases.get(name, name)
        if name in self._entries or name in self._pending:
            return name
        names = self.names()
        close = difflib.get_close_matches(str(name), [*names, *self.aliases], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        aliases = f"; aliases: {', '.join(sorted(self.aliases))}" if self.aliases else ""
        where = f" ({self.where})" if self.where else ""
        raise self.error(f"unknown {self.kind} {name!r}{hint}; choose one of "
                         f"{', '.join(names)}{aliases}{where}")

    def entry(self, name: str) -> Entry[T]:
        """The `Entry` of `name` (or its alias), loading a plugin's entry point on first use."""
        name = self.canonical(name)
        return self._entries[name] if name in self._entries else self._load(name)

    def get(self, name: str) -> T:
        return self.entry(name).value

    # --- building with the entry's own settings ------------------------------------------------
    def build(self, name: str, section: Any, where: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory of `name` with `args` and `kwargs`, plus ``settings=`` (its config
        class, built from its table ``[<where>.<name>]`` in config `section`) when the entry has a
        config class. Every plugin table in `section` must name a registered entry."""
        for table in plugin_tables_of(section):
            try:
                registered = self.canonical(table)
            except Exception as exc:
                raise ConfigError(f"[{where}.{table}]: a settings table for {self.kind} "
                                  f"{table!r}, which is not registered: {exc}") from None
            if registered != table:
                raise ConfigError(f"[{where}.{table}]: {table!r} is an alias; name the table "
                                  f"[{where}.{registered}]")
        entry = self.entry(name)
        settings = entry_settings(section, entry.name, entry.config_class, where)
        if entry.config_class is not None:
            kwargs["settings"] = settings
        return entry.value(*args, **kwargs)
