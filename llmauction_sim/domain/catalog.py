"""Ads and the ad catalog.

An ad has an ID such as ``Ad-4820`` and a title; the Ad-LLM mentions it as ``@Title@[Ad-4820]``.
Titles therefore may not contain the characters of that markup. A `Catalog` is an immutable,
validated sequence of ads; `load_catalog` reads one from JSON (default: the packaged catalog).

JSON schema::

    {"version": 1, "ads": [{"id": "Ad-4820", "title": "...", "category": "running_shoes",
                            "description": "...", "keywords": ["...", ...]}, ...]}
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, overload

#: Characters a title may not contain: '@', '[' and ']' delimit a mention, and a line break would
#: split it.
MENTION_FORBIDDEN_CHARS: tuple[str, ...] = ("@", "[", "]", "\n", "\r")

AD_ID_PATTERN = re.compile(r"^Ad-\d{4}$", re.ASCII)
CATALOG_VERSION = 1
_AD_KEYS = ("id", "title", "category", "description", "keywords")
_FORBIDDEN_HINT = "titles may not contain '@', '[', ']' or line breaks"


class CatalogError(ValueError):
    """A catalog is malformed; the message names the ad, the problem and the fix."""


@dataclass(frozen=True)
class Ad:
    id: str
    title: str
    category: str
    description: str
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any iterable (e.g. a JSON list) but store a tuple so the ad stays hashable.
        if not isinstance(self.keywords, tuple):
            object.__setattr__(self, "keywords", tuple(self.keywords))

    def text(self) -> str:
        """The ad as one passage for a text encoder: title, description and keywords."""
        parts = [f"{self.title}. {self.description}".strip()]
        if self.keywords:
            parts.append("Keywords: " + ", ".join(self.keywords))
        return " ".join(parts)


def _label(index: int, ad_id: object) -> str:
    return f"ad #{index} ({ad_id})" if isinstance(ad_id, str) and ad_id else f"ad #{index}"


def validate_ads(ads: Iterable[Ad]) -> None:
    """Check IDs, titles and categories; raise `CatalogError` on the first problem.

    Ads are numbered from 0 in messages (their position in the list).
    """
    seen_ids: dict[str, int] = {}
    seen_titles: dict[str, tuple[int, str]] = {}
    for i, ad in enumerate(ads):
        if not isinstance(ad, Ad):
            raise CatalogError(f"ad #{i}: expected an Ad, got {type(ad).__name__}; build ads with "
                               "Ad(id=..., title=..., ...) or read them with load_catalog()")
        where = _label(i, ad.id)
        # fullmatch: '$' alone would accept a trailing newline.
        if not isinstance(ad.id, str) or not AD_ID_PATTERN.fullmatch(ad.id):
            raise CatalogError(f"ad #{i}: id {ad.id!r} does not match 'Ad-NNNN'; use 'Ad-' "
                               "followed by exactly four digits, e.g. 'Ad-4820'")
        if ad.id in seen_ids:
            raise CatalogError(f"{where}: duplicate id; ad #{seen_ids[ad.id]} already uses it; "
                               "give every ad its own id")
        seen_ids[ad.id] = i
        if not isinstance(ad.title, str) or not ad.title.strip():
            raise CatalogError(f"{where}: title is empty; give every ad a non-empty title")
        for ch in MENTION_FORBIDDEN_CHARS:
            if ch in ad.title:
                raise CatalogError(f"{where}: title {ad.title!r} contains the markup character "
                                   f"{ch!r}; {_FORBIDDEN_HINT}")
        if ad.title != ad.title.strip():
            raise CatalogError(f"{where}: title {ad.title!r} has leading or trailing whitespace; "
                               "strip it (the Ad-LLM must copy titles exactly)")
        key = ad.title.casefold()
        if key in seen_titles:
            j, other_id = seen_titles[key]
            raise CatalogError(f"{where}: title {ad.title!r} duplicates the title of ad #{j} "
                               f"({other_id}) (compared case-insensitively); make every title "
                               "unique so a mention names one ad")
        seen_titles[key] = (i, ad.id)
        if not isinstance(ad.category, str) or not ad.category.strip():
            raise CatalogError(f"{where}: category is empty; give every ad a category slug such "
                               "as 'running_shoes'")


class Catalog(Sequence[Ad]):
    """An immutable, validated sequence of ads with lookups by ID and category."""

    def __init__(self, ads: Iterable[Ad]) -> None:
        self._ads: tuple[Ad, ...] = tuple(ads)
        validate_ads(self._ads)
        self._index = {ad.id: i for i, ad in enumerate(self._ads)}
        by_cat: dict[str, list[Ad]] = {}
        for ad in self._ads:
            by_cat.setdefault(ad.category, []).append(ad)
        self._by_category = {cat: tuple(group) for cat, group in by_cat.items()}

    def __len__(self) -> int:
        return len(self._ads)

    def __iter__(self) -> Iterator[Ad]:
        return iter(self._ads)

    @overload
    def __getitem__(self, index: int) -> Ad: ...
    @overload
    def __getitem__(self, index: slice) -> Catalog: ...
    def __getitem__(self, index: int | slice) -> Ad | Catalog:
        if isinstance(index, slice):
            return Catalog(self._ads[index])
        return self._ads[index]

    def __contains__(self, item: object) -> bool:
        # Membership by ad or by ID string, both O(1).
        if isinstance(item, str):
            return item in self._index
        return isinstance(item, Ad) and self.get(item.id) == item

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self._ads == other._ads

    def __hash__(self) -> int:
        return hash(self._ads)

    def __repr__(self) -> str:
        return f"Catalog({len(self._ads)} ads, {len(self._by_category)} categories)"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(ad.id for ad in self._ads)

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(ad.title for ad in self._ads)

    @property
    def categories(self) -> tuple[str, ...]:
        """Sorted unique category slugs."""
        return tuple(sorted(self._by_category))

    def get(self, ad_id: str) -> Ad | None:
        i = self._index.get(ad_id)
        return None if i is None else self._ads[i]

    def by_id(self, ad_id: str) -> Ad:
        return self._ads[self.index_of(ad_id)]

    def index_of(self, ad_id: str) -> int:
        """Position of the ad in the catalog; `KeyError` naming close IDs if unknown."""
        try:
            return self._index[ad_id]
        except (KeyError, TypeError):
            raise KeyError(self._unknown_id_message(ad_id)) from None

    def in_category(self, category: str) -> list[Ad]:
        """Ads of one category in catalog order; empty for a category the catalog lacks."""
        return list(self._by_category.get(category, ()))

    def subset(self, ids: Iterable[str]) -> Catalog:
        """A catalog of the given ads, in the given order; `KeyError` for an unknown ID."""
        return Catalog(self.by_id(ad_id) for ad_id in ids)

    def _unknown_id_message(self, ad_id: object) -> str:
        close = difflib.get_close_matches(str(ad_id), self._index, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (f"unknown ad id {ad_id!r}: the catalog has {len(self)} ads{hint} "
                "(use Catalog.get() to get None instead of an error)")


def _ad_from_json(i: int, item: Any, where: str) -> Ad:
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: ad #{i} is a {type(item).__name__}, not an object; every "
                           f"ad is an object with keys {', '.join(_AD_KEYS)}")
    missing = [k for k in _AD_KEYS if k not in item]
    if missing:
        raise CatalogError(f"{where}: {_label(i, item.get('id'))} lacks the key(s) "
                           f"{', '.join(missing)}; every ad needs {', '.join(_AD_KEYS)}")
    for key in ("id", "title", "category", "description"):
        if not isinstance(item[key], str):
            raise CatalogError(f"{where}: {_label(i, item.get('id'))}: {key} must be a string, "
                               f"got {type(item[key]).__name__}")
    keywords = item["keywords"]
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise CatalogError(f"{where}: {_label(i, item['id'])}: keywords must be a list of "
                           "strings, e.g. [\"running\", \"shoes\"]")
    return Ad(id=item["id"], title=item["title"], category=item["category"],
              description=item["description"], keywords=tuple(keywords))


def parse_catalog(data: Any, where: str = "catalog") -> Catalog:
    """Build a `Catalog` from decoded JSON; `where` names the source in error messages."""
    if not isinstance(data, dict) or not isinstance(data.get("ads"), list):
        raise CatalogError(f"{where}: expected a JSON object with an 'ads' list, like "
                           '{"version": 1, "ads": [{"id": "Ad-4820", "title": ...}]}')
    version = data.get("version", CATALOG_VERSION)
    if version != CATALOG_VERSION:
        raise CatalogError(f"{where}: catalog version {version!r} is not supported; this code "
                           f"reads version {CATALOG_VERSION}")
    ads = [_ad_from_json(i, item, where) for i, item in enumerate(data["ads"])]
    try:
        return Catalog(ads)
    except CatalogError as err:
        raise CatalogError(f"{where}: {err}") from None


@functools.lru_cache(maxsize=8)
def _load_cached(resolved: str) -> Catalog:
    # Only the packaged catalog goes through here: it never changes while the process runs, and
    # a Catalog is immutable, so one shared instance is safe.
    return _load_file(Path(resolved))


def _load_file(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"catalog file {str(path)!r} does not exist; check the path (or pass "
                           "None to use the packaged catalog)") from None
    except OSError as err:
        raise CatalogError(f"catalog file {str(path)!r} cannot be read ({err}); check the path "
                           "and its permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CatalogError(f"catalog file {str(path)!r} is not valid JSON (line {err.lineno}, "
                           f"column {err.colno}: {err.msg}); fix the syntax there") from None
    return parse_catalog(data, where=str(path))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read a catalog JSON file; ``None`` reads the packaged catalog (cached)."""
    if path is None:
        resource = files("llmauction_sim") / "resources" / "catalog.json"
        with as_file(resource) as real_path:
            return _load_cached(str(Path(real_path).resolve()))
    return _load_file(Path(path).expanduser())
