"""The paper's click judge: the User-LLM reads the answer and replies with a JSON list of clicks.

Reading the reply (`parse_click_output`) never raises. The fallback rule: an inserted ad is clicked
only when the reply holds a readable entry for it whose ``clicked`` value reads as yes; an ad with
no readable entry is not clicked. A decision is flagged malformed when that rule had to decide
anything: no entry could be read at all, an entry names no inserted ad or has no readable
``clicked`` value, two entries for one ad disagree, or an inserted ad has no entry. Harmless noise is
tolerated without a flag: code fences and text around the list, single quotes, Python literals,
trailing commas, ``"yes"``/``"no"`` strings, IDs written inside markup or as the title, and entries in
any order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmauction_sim.clicks.base import ClickDecision, ClickJudge, ClickRequest, register_judge
from llmauction_sim.config import LlmJudgeConfig
from llmauction_sim.domain.catalog import Ad
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.prompts import click_judge_messages

_YES = frozenset({"true", "yes", "y", "1", "click", "clicked", "would click", "yes click"})
_NO = frozenset({"false", "no", "n", "0", "no click", "not clicked", "skip", "none", "null",
                 "would not click"})
_ID_KEYS = ("ad_id", "adid", "id", "ad", "ad id", "product", "product_id")
_CLICK_KEYS = ("clicked", "click", "clicks", "decision", "would_click")
_AD_ID = re.compile(r"ad[-_ ]?(\d{4})(?!\d)", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z]*")
_SINGLE_QUOTED = re.compile(r"'((?:[^'\\\n]|\\.)*)'(?=\s*[:,}\]])")
_PY_LITERAL = re.compile(r"\b(True|False|None)\b")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_OBJECT = re.compile(r"\{[^{}]*\}")
# An entry cut off after its clicked value (e.g. by the token limit): ad_id, then clicked.
_FRAGMENT = re.compile(
    r"""["']?ad_?id["']?\s*:\s*["']?([^"',}\]]{1,80})["']?\s*,\s*["']?clicked["']?\s*:\s*"""
    r"""["']?([A-Za-z0-9]+)""", re.IGNORECASE)
STOP = ("]",)  # generation stops at the first token holding a ']'
_MAX_STARTS = 8  # JSON start positions tried; bounds the work on long, bracket-heavy text
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedClicks:
    clicked: tuple[str, ...]            # exposed IDs read as clicked, in exposure order
    decided: tuple[str, ...]            # exposed IDs with a readable decision
    malformed: bool
    reasons: dict[str, str] = field(default_factory=dict)


def _repair(text: str) -> str:
    text = _SINGLE_QUOTED.sub(lambda m: json.dumps(m.group(1)), text)
    text = _PY_LITERAL.sub(lambda m: {"True": "true", "False": "false", "None": "null"}[m[1]], text)
    return _TRAILING_COMMA.sub(r"\1", text)


def _decode_first(text: str) -> Any:
    """The first JSON value that starts at a '[' or '{' (repaired if needed), else None."""
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:_MAX_STARTS]
    for start in starts:
        for candidate in (text[start:], _repair(text[start:])):
            try:
                return _DECODER.raw_decode(candidate)[0]
            except (ValueError, RecursionError):
                continue
    return None


def _entries(text: str) -> list[Any]:
    """Candidate entries of the reply, from the most to the least structured reading."""
    body = _FENCE.sub(" ", text)
    value = _decode_first(body)
    if isinstance(value, dict):
        keys = {str(k).lower() for k in value}
        if keys & set(_ID_KEYS):
            return [value]
        lists = [v for v in value.values() if isinstance(v, list)]
        if lists:
            return lists[0]
        return [{"ad_id": k, "clicked": v} for k, v in value.items()]
    if isinstance(value, list) and (not value or any(isinstance(e, dict) for e in value)):
        return value
    # No complete list: read whole objects one by one, then entries cut off at the end.
    entries: list[Any] = []
    for match in _OBJECT.finditer(body):
        obj = _decode_first(match.group(0))
        if isinstance(obj, dict):
            entries.append(obj)
    if not entries:
        entries = [{"ad_id": a.strip(), "clicked": c} for a, c in _FRAGMENT.findall(body)]
    return entries if entries or value is not None else [None]


def _lookup(entry: dict, keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in entry.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _read_id(value: Any, exposed: Sequence[Ad]) -> str | None:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return None
    text = str(value)
    ids = {ad.id: ad.id for ad in exposed}
    match = _AD_ID.search(text)
    if match:
        return ids.get(f"Ad-{match.group(1)}")
    if isinstance(value, int):
        return None
    title = text.strip().strip("@[]\"' ").casefold()
    for ad in exposed:
        if ad.title.casefold() == title:
            return ad.id
    return None


def _read_clicked(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = re.sub(r"[^a-z0-9 ]", "", value.strip().lower()).strip()
        first = word.split(" ", 1)[0]
        if word in _YES or first in ("yes", "true"):
            return True
        if word in _NO or first in ("no", "false", "not"):
            return False
    return None


def parse_click_output(text: str, exposed: Sequence[Ad]) -> ParsedClicks:
    """Read the click judge's reply for one answer whose inserted ads are `exposed`.

    Never raises (any string, any exposed list); see the module docstring for the rule.
    """
    try:
        entries = _entries(text if isinstance(text, str) else "")
    except Exception:  # noqa: BLE001  (a reply must never crash a run; flagged below)
        entries = [None]
    decisions: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    malformed = False
    for entry in entries:
        if not isinstance(entry, dict):
            malformed = True
            continue
        ad_id = _read_id(_lookup(entry, _ID_KEYS), exposed)
        clicked = _read_clicked(_lookup(entry, _CLICK_KEYS))
        if ad_id is None or clicked is None:
            malformed = True
            continue
        if ad_id in decisions:
            malformed |= decisions[ad_id] != clicked  # the first entry decides
            continue
        decisions[ad_id] = clicked
        reason = _lookup(entry, ("reason",))
        if isinstance(reason, str):
            reasons[ad_id] = reason
    if any(ad.id not in decisions for ad in exposed):
        malformed = True
    return ParsedClicks(clicked=tuple(ad.id for ad in exposed if decisions.get(ad.id)),
                        decided=tuple(ad.id for ad in exposed if ad.id in decisions),
                        malformed=malformed, reasons=reasons)


class LLMJudge(ClickJudge):
    """The User-LLM judges each answer with the paper's click prompt; one `generate` per call."""

    name = "llm"

    def __init__(self, lm: LanguageModel, sampling: SamplingParams):
        self.lm = lm
        self.sampling = sampling

    @classmethod
    def from_config(cls, config, *, user_lm: LanguageModel,
                    settings: LlmJudgeConfig | None = None) -> LLMJudge:
        """From the run config; `settings` defaults to its table ``[clicks.llm]``."""
        settings = settings or config.clicks.llm
        sampling = SamplingParams.from_config(config.user_sampling,
                                              max_new_tokens=settings.max_new_tokens)
        return cls(user_lm, sampling)

    def replies(self, requests: Sequence[ClickRequest], rng: np.random.Generator
                ) -> list[str | None]:
        """The raw reply per request (None where nothing is exposed: no model call for it)."""
        todo = [i for i, r in enumerate(requests) if r.exposed]
        out: list[str | None] = [None] * len(requests)
        if not todo:
            return out
        prompts = [click_judge_messages(requests[i].profile, requests[i].query,
                                        requests[i].response, requests[i].exposed) for i in todo]
        # The reply ends with the list's ']': stopping there saves the tokens a small model spends
        # inventing further entries after it.
        params = [dataclasses.replace(self.sampling, n=1, seed=int(rng.integers(2**63)),
                                      stop=STOP) for _ in todo]
        for i, completions in zip(todo, self.lm.generate(prompts, params)):
            out[i] = completions[0].text
        return out

    def judge(self, requests: Sequence[ClickRequest], rng: np.random.Generator
              ) -> list[ClickDecision]:
        decisions = []
        for r, reply in zip(requests, self.replies(requests, rng)):
            if reply is None:
                decisions.append(ClickDecision(clicked=()))
                continue
            parsed = parse_click_output(reply, r.exposed)
            decisions.append(ClickDecision(clicked=parsed.clicked, malformed=parsed.malformed))
        return decisions


def load_user_lm(config) -> LanguageModel:
    from llmauction_sim.lm.registry import load_language_model

    return load_language_model(config.user_llm, seed=config.seed, run_config=config)


def make_llm_judge(config, *, settings=None, user_lm=None, encoder=None, catalog=None
                   ) -> LLMJudge:
    """Registered as 'llm'; loads the User-LLM (`user_llm`) if not given."""
    return LLMJudge.from_config(config, user_lm=user_lm if user_lm is not None
                                else load_user_lm(config), settings=settings)


register_judge("llm", make_llm_judge, "the paper's User-LLM reading the answer and listing its clicks",
               config_class=LlmJudgeConfig)
