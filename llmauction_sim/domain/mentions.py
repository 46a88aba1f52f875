"""Ad mention syntax: render, parse and validate ``@Ad Title@[Ad-NNNN]``, and score a response
(format penalty s_resp and the paper's reward R, the one definition every caller uses).

The Ad-LLM exposes an ad by writing its mention in the answer; title and ID must match the candidate
list exactly (see docs/format_penalty.md for the full grammar and the penalty).

Grammar, applied per line (a title never spans a line break), left to right, non-overlapping:

* Tail form ``@T@[X]``: an ``@``, a title ``T`` (any characters except ``@``, ``[``, ``]`` and line
  breaks; possibly empty), then ``@[``, then ``X`` (same character set), then an optional ``]``.
  The opening ``@`` is the nearest ``@`` before ``@[`` on the same line. It is a well-formed
  `Mention` iff ``T`` is not blank, ``X`` is exactly ``Ad-`` plus four ASCII digits and ``]`` is
  present; otherwise it is MALFORMED (empty title ``@@[Ad-1234]``, ``@T@[`` with no ``]``,
  ``@T@[not-an-id]``, ``@T@[ Ad-1234 ]``, ``@T@[ad-1234]``, ...).
* Bare pair ``@T@`` with no ``[ID]``: MALFORMED when it looks like a mention: the opening ``@`` is
  not preceded by a letter, digit or ``_``; ``T`` is non-empty and neither starts nor ends with
  whitespace; the closing ``@`` is not followed by a letter, digit, ``_`` or ``[``. A bracketed
  ID-like token after spaces (``@T@ [Ad-1234]``) belongs to the same issue.
* Orphan tail ``@[X]`` with no opening ``@`` on its line (e.g. a title split by a line break, where
  the second line reads ``Title@[Ad-1234]``): MALFORMED.
* Orphan ID ``[Ad-1234]`` (ID-like: ``ad``/``Ad``/``AD``, optional ``-`` or ``_``, digits; spaces
  allowed; ``]`` optional) not part of a tail form: MALFORMED.

Everything else is ordinary text: an email ``me@example.com`` (its ``@`` follows a letter), a handle
``@john`` (no closing ``@``), ``@john and @mary`` (the pair's title would end with a space),
``price @ $5``. An unbracketed ``Ad-1234`` is ignored. All patterns use negated character classes
with no ambiguous repetition, so scanning is linear in the length of the text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only: the domain takes any object with the penalty weights
    from llmauction_sim.config import PenaltyConfig

# Every character str.splitlines() breaks on: a title must stay on one line.
_BREAKS = r"\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_TEXT = rf"[^@\[\]{_BREAKS}]"            # a title or bracket-content character
_EDGE = r"[^\s@\[\]]"                    # first/last title character of a bare pair
# Never two optional space runs side by side: that would backtrack quadratically on long spaces.
_ID_LIKE = r"\[[ \t]*[Aa][Dd][ \t]*(?:[-_][ \t]*)?[0-9]+[ \t]*\]?"

_TOKEN = re.compile(
    rf"(?P<tail>@(?P<title>{_TEXT}*)@\[(?P<id>{_TEXT}*)(?P<close>\])?)"
    rf"|(?P<bare>(?<!\w)@{_EDGE}(?:{_TEXT}*{_EDGE})?@(?![\w\[])(?:[ \t]+{_ID_LIKE})?)"
    rf"|(?P<orphan_tail>@\[{_TEXT}*\]?)"
    rf"|(?P<orphan_id>{_ID_LIKE})"
)
_AD_ID = re.compile(r"Ad-[0-9]{4}")
_AD_ID_SEARCH = re.compile(r"Ad-[0-9]{4}(?![0-9])")
_FORBIDDEN_IN_TITLE = re.compile(rf"[@\[\]{_BREAKS}]")


class MentionError(StrEnum):
    """Kinds of format error; each value is also the name of its weight in `PenaltyConfig`."""

    MALFORMED = "malformed"
    UNKNOWN_ID = "unknown_id"
    TITLE_MISMATCH = "title_mismatch"
    DUPLICATE = "duplicate"
    NON_CANDIDATE = "non_candidate"


@dataclass(frozen=True)
class Mention:
    """A well-formed ``@title@[ad_id]``; ``text[start:end]`` is the whole markup."""

    title: str
    ad_id: str
    start: int
    end: int


@dataclass(frozen=True)
class Issue:
    """One format error at ``text[start:end]``; ``ad_id`` when an ID can be read from it."""

    kind: MentionError
    text: str
    start: int
    end: int
    ad_id: str | None


@dataclass(frozen=True)
class MentionReport:
    """Valid exposures (first valid mention of each ad, in order) and all issues, by position."""

    valid: tuple[Mention, ...]
    issues: tuple[Issue, ...]

    @property
    def exposed_ids(self) -> tuple[str, ...]:
        return tuple(m.ad_id for m in self.valid)

    @property
    def num_ads(self) -> int:
        return len(self.valid)

    @property
    def num_errors(self) -> int:
        return len(self.issues)

    def error_counts(self) -> dict[str, int]:
        """Count per error kind; every kind is present, zero when absent."""
        counts = Counter(issue.kind for issue in self.issues)
        return {kind.value: counts.get(kind, 0) for kind in MentionError}

    @property
    def has_format_error(self) -> bool:
        """True when any issue was found (duplicates included)."""
        return bool(self.issues)


def render_mention(title: str, ad_id: str) -> str:
    """The markup the Ad-LLM must write for an ad; raises ValueError if it could not parse back."""
    if not title.strip() or _FORBIDDEN_IN_TITLE.search(title):
        raise ValueError(f"ad title {title!r} must be non-blank, on one line, without '@', '[' "
                         "or ']'")
    if not _AD_ID.fullmatch(ad_id):
        raise ValueError(f"ad id {ad_id!r} must look like 'Ad-1234'")
    return f"@{title}@[{ad_id}]"


def _malformed(match: re.Match[str]) -> Issue:
    fragment = match.group()
    found = _AD_ID_SEARCH.search(fragment) if "Ad-" in fragment else None
    start, end = match.span()
    return Issue(MentionError.MALFORMED, fragment, start, end, found.group() if found else None)


def parse_mentions(text: str) -> tuple[list[Mention], list[Issue]]:
    """Well-formed mentions and MALFORMED fragments of `text`, each in order of position.

    Never raises for any string; spans are within ``[0, len(text)]`` and never overlap.
    """
    mentions: list[Mention] = []
    issues: list[Issue] = []
    for match in _TOKEN.finditer(text):
        if match.group("tail") is not None:
            title, ad_id = match.group("title"), match.group("id")
            if title.strip() and match.group("close") and _AD_ID.fullmatch(ad_id):
                mentions.append(Mention(title, ad_id, match.start(), match.end()))
                continue
        issues.append(_malformed(match))
    return mentions, issues


def validate_response(text: str, candidates: Mapping[str, str],
                      catalog_ids: Collection[str] | None = None) -> MentionReport:
    """Check every mention of `text` against this query's `candidates` (ad_id -> exact title).

    A candidate ID with its exact title (no case or whitespace normalisation: a title must never be
    altered) is valid the first time; again it is DUPLICATE. A candidate ID with another title is
    TITLE_MISMATCH. A non-candidate ID is NON_CANDIDATE if it is in `catalog_ids`, else UNKNOWN_ID
    (always UNKNOWN_ID when `catalog_ids` is None). Malformed fragments come from `parse_mentions`.
    """
    known = frozenset(catalog_ids) if catalog_ids is not None else frozenset()
    mentions, issues = parse_mentions(text)
    valid: list[Mention] = []
    seen: set[str] = set()
    for m in mentions:
        kind: MentionError | None = None
        if m.ad_id not in candidates:
            kind = MentionError.NON_CANDIDATE if m.ad_id in known else MentionError.UNKNOWN_ID
        elif m.title != candidates[m.ad_id]:
            kind = MentionError.TITLE_MISMATCH
        elif m.ad_id in seen:
            kind = MentionError.DUPLICATE
        if kind is None:
            seen.add(m.ad_id)
            valid.append(m)
        else:
            issues.append(Issue(kind, text[m.start:m.end], m.start, m.end, m.ad_id))
    issues.sort(key=lambda issue: issue.start)
    return MentionReport(tuple(valid), tuple(issues))


def strip_mentions(text: str) -> str:
    """`text` with each well-formed mention replaced by its title (what a user should read).

    Malformed fragments are left as they are.
    """
    parts: list[str] = []
    pos = 0
    for m in parse_mentions(text)[0]:
        parts.append(text[pos:m.start])
        parts.append(m.title)
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts)


def format_penalty(report: MentionReport, config: PenaltyConfig) -> float:
    """s_resp(y), in bid units::

        s_resp = per_ad * n + flooding * max(0, n - free_ads) + sum_issues weight[kind]

    with n = number of distinct validly exposed ads and weight[kind] the `PenaltyConfig` field
    named like the kind (malformed, unknown_id, title_mismatch, non_candidate, duplicate).
    """
    n = report.num_ads
    total = config.per_ad * n + config.flooding * max(0, n - config.free_ads)
    for kind, count in report.error_counts().items():
        total += getattr(config, kind) * count
    return float(total)


def exposure_revenue(exposed_ids: Collection[str], bids: Mapping[str, float],
                     ctr: Mapping[str, float]) -> float:
    """sum over `exposed_ids` (in order) of bids[id] * ctr[id]: R's revenue term.

    `ctr` holds pCTRs or realised clicks (0/1); both mappings must cover every exposed ad.
    """
    for ad_id in exposed_ids:
        if ad_id not in bids or ad_id not in ctr:
            raise KeyError(f"exposed ad {ad_id!r} needs both a bid and a ctr value")
    # sum() from int 0: no exposed ad gives 0, the integer IRPO's sample logs have always held.
    return sum(float(bids[ad_id]) * float(ctr[ad_id]) for ad_id in exposed_ids)


def net_reward(revenue, penalty, lam: float = 1.0):
    """R = revenue - lam * s_resp; also elementwise on numpy arrays."""
    return revenue - lam * penalty


def paper_reward(report: MentionReport, bids: Mapping[str, float], ctr: Mapping[str, float],
                 config: PenaltyConfig, lam: float = 1.0) -> float:
    """R = sum over exposed ids of bids[id] * ctr[id] - lam * s_resp (paper Eq. 5/8).

    `ctr` holds pCTRs or realised clicks (0/1); both mappings must cover every exposed ad.
    """
    return net_reward(exposure_revenue(report.exposed_ids, bids, ctr),
                      format_penalty(report, config), lam)
