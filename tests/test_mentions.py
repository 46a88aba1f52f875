"""Mention grammar, validation, the format penalty s_resp and the paper's reward."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re

import pytest
from conftest import assert_near_linear
from hypothesis import given, settings
from hypothesis import strategies as st

from llmauction_sim.config import PenaltyConfig
from llmauction_sim.domain.mentions import (
    Issue,
    Mention,
    MentionError,
    MentionReport,
    format_penalty,
    paper_reward,
    parse_mentions,
    render_mention,
    strip_mentions,
    validate_response,
)

RUNNERS = ("Ad-4820", "Stridewell Road Runners")
COFFEE = ("Ad-2008", "Copper Kettle Roasters")
TRAIL = ("Ad-8617", "Trailfox Grip Shoes")
CANDIDATES = dict([RUNNERS, COFFEE, TRAIL])
CATALOG_IDS = set(CANDIDATES) | {"Ad-7211", "Ad-3414"}


def m(ad: tuple[str, str]) -> str:
    return render_mention(ad[1], ad[0])


def kinds(text: str, catalog_ids=CATALOG_IDS) -> list[MentionError]:
    return [i.kind for i in validate_response(text, CANDIDATES, catalog_ids).issues]


# ------------------------------------------------------------------------------------------------
# render and parse
# ------------------------------------------------------------------------------------------------

def test_render_mention():
    assert render_mention("Stridewell Road Runners", "Ad-4820") == \
        "@Stridewell Road Runners@[Ad-4820]"


@pytest.mark.parametrize("title, ad_id", [
    ("", "Ad-1234"), ("   ", "Ad-1234"), ("A@B", "Ad-1234"), ("A[B", "Ad-1234"),
    ("A]B", "Ad-1234"), ("A\nB", "Ad-1234"), ("Shoes", "Ad-12"), ("Shoes", "ad-1234"),
    ("Shoes", " Ad-1234"),
])
def test_render_mention_refuses_unparseable(title, ad_id):
    with pytest.raises(ValueError):
        render_mention(title, ad_id)


def test_parse_finds_mentions_with_spans():
    text = f"Try {m(RUNNERS)} and {m(COFFEE)}."
    mentions, issues = parse_mentions(text)
    assert issues == []
    assert [(x.title, x.ad_id) for x in mentions] == [RUNNERS[::-1], COFFEE[::-1]]
    for x in mentions:
        assert text[x.start:x.end] == render_mention(x.title, x.ad_id)


def test_adjacent_mentions_and_glued_mention():
    mentions, issues = parse_mentions(f"{m(RUNNERS)}{m(COFFEE)} and word{m(TRAIL)}")
    assert issues == []
    assert [x.ad_id for x in mentions] == ["Ad-4820", "Ad-2008", "Ad-8617"]


@pytest.mark.parametrize("text, fragment", [
    ("Try @Stridewell Road Runners@ today.", "@Stridewell Road Runners@"),
    ("Try @Stridewell Road Runners@", "@Stridewell Road Runners@"),
    ("Try (@Runners@).", "@Runners@"),
    ("Try @Runners@ [Ad-4820] now", "@Runners@ [Ad-4820]"),
    ("Try @Runners@[Ad-4820 now", "@Runners@[Ad-4820 now"),
    ("Try @Runners@[", "@Runners@["),
    ("Try @Runners@[Ad-4820", "@Runners@[Ad-4820"),
    ("Try @Runners@[Ad-4820\nThanks", "@Runners@[Ad-4820"),
    ("see [Ad-4820] here", "[Ad-4820]"),
    ("see [ad 4820] here", "[ad 4820]"),
    ("see [Ad-4820", "[Ad-4820"),
    ("Try @Runners@[not-an-id].", "@Runners@[not-an-id]"),
    ("Try @Runners@[ Ad-4820 ].", "@Runners@[ Ad-4820 ]"),
    ("Try @Runners@[ad-4820].", "@Runners@[ad-4820]"),
    ("Try @Runners@[Ad-48201].", "@Runners@[Ad-48201]"),
    ("Try @Runners@[Ad-٤٨٢٠].", "@Runners@[Ad-٤٨٢٠]"),
    ("Try @Stridewell Road\nRunners@[Ad-4820].", "@[Ad-4820]"),
    ("Try @Stridewell Road\u2028Runners@[Ad-4820].", "@[Ad-4820]"),
    ("Try @@[Ad-4820].", "@@[Ad-4820]"),
    ("Try @ @[Ad-4820].", "@ @[Ad-4820]"),
    ("Try Runners@[Ad-4820].", "@[Ad-4820]"),
])
def test_malformed(text, fragment):
    mentions, issues = parse_mentions(text)
    assert mentions == []
    assert [(i.kind, i.text) for i in issues] == [(MentionError.MALFORMED, fragment)]
    issue = issues[0]
    assert text[issue.start:issue.end] == fragment
    # the ID is reported when the fragment holds an exact one (not "Ad-48201")
    assert issue.ad_id == ("Ad-4820" if re.search(r"Ad-4820(?![0-9])", fragment) else None)


def test_malformed_next_to_a_valid_mention():
    text = f"@Runners@ then {m(COFFEE)} and [Ad-4820]"
    mentions, issues = parse_mentions(text)
    assert [x.ad_id for x in mentions] == ["Ad-2008"]
    assert [i.text for i in issues] == ["@Runners@", "[Ad-4820]"]


@pytest.mark.parametrize("text", [
    "write to me@example.com for details",
    "me@example.com and you@example.org",
    "ask @john about it",
    "@john and @mary agree",
    "@john, @mary and @sue",
    "@home@work",
    "price @ $5 @ the store",
    "an ID without brackets: Ad-4820",
    "a [link](https://example.com) and [1] and [Adidas]",
    "@decorator\n@other",
    "email a@b.c, @handle, x@y@z",
    "name@host@ is no address",
    "",
])
def test_ordinary_at_is_not_a_mention(text):
    assert parse_mentions(text) == ([], [])
    report = validate_response(text, CANDIDATES, CATALOG_IDS)
    assert report.num_ads == 0 and report.num_errors == 0


def test_email_before_a_mention_does_not_swallow_it():
    mentions, issues = parse_mentions(f"mail me@example.com or try {m(RUNNERS)}")
    assert issues == []
    assert [x.ad_id for x in mentions] == ["Ad-4820"]


TITLE_CHARS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",),
                           exclude_characters="@[]\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    min_size=1, max_size=40,
).map(str.strip).filter(bool)
SIMPLE_TITLES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '&-.,",
    min_size=1, max_size=40,
).map(str.strip).filter(bool)
AD_IDS = st.from_regex(r"\AAd-[0-9]{4}\Z")
PLAIN_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",),
                                            exclude_characters="@[]"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(title=st.one_of(SIMPLE_TITLES, TITLE_CHARS), ad_id=AD_IDS, prefix=PLAIN_TEXT,
       suffix=PLAIN_TEXT)
def test_round_trip(title, ad_id, prefix, suffix):
    text = prefix + render_mention(title, ad_id) + suffix
    mentions, issues = parse_mentions(text)
    assert issues == []
    assert mentions == [Mention(title, ad_id, len(prefix), len(text) - len(suffix))]
    report = validate_response(text, {ad_id: title})
    assert report.exposed_ids == (ad_id,) and report.num_errors == 0
    assert strip_mentions(text) == prefix + title + suffix


def _check_spans(text: str, spans: list[tuple[int, int]]) -> None:
    spans = sorted(spans)
    for start, end in spans:
        assert 0 <= start < end <= len(text)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


MARKUP_HEAVY = st.text(alphabet=st.sampled_from(list("@[]Ad-0123 xé\n")) | st.characters(),
                       max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), MARKUP_HEAVY))
def test_fuzz_never_raises_spans_in_bounds(text):
    mentions, issues = parse_mentions(text)
    _check_spans(text, [(x.start, x.end) for x in mentions] + [(i.start, i.end) for i in issues])
    for x in mentions:
        assert text[x.start:x.end] == render_mention(x.title, x.ad_id)
    for i in issues:
        assert text[i.start:i.end] == i.text
    report = validate_response(text, CANDIDATES, CATALOG_IDS)
    _check_spans(text, [(x.start, x.end) for x in report.valid]
                 + [(i.start, i.end) for i in report.issues])
    assert report.num_ads + report.num_errors == len(mentions) + len(issues)
    assert format_penalty(report, PenaltyConfig()) >= 0
    strip_mentions(text)


ADVERSARIAL = {  # input of size ~n that a backtracking pattern would make quadratic
    "open_brackets": lambda n: "@[" * (n // 2),
    "long_gap_before_at": lambda n: "@" + " " * n + "x@",
    "unterminated_id": lambda n: "[Ad" + " " * n,
    "lowercase_id": lambda n: "[ad-" + " " * n + "x",
    "many_ats": lambda n: "@a" * (n // 2),
    "long_titles": lambda n: ("@" + "a " * 50) * (n // 101),
    "tabs": lambda n: "@x" + "\t" * n + "@",
}


@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_adversarial_input_scales_linearly(case):
    """Validation stays linear: 8x the input costs well under 24x the CPU time (a quadratic
    pattern would take 64x)."""
    def validate(n):
        text = ADVERSARIAL[case](n)
        return lambda: validate_response(text, CANDIDATES, CATALOG_IDS)
    assert_near_linear(validate(25_000), validate(200_000), 8)


def test_random_markup_characters_scale_linearly():
    rng = random.Random(0)
    text = "".join(rng.choice("@[") for _ in range(200_000))
    assert_near_linear(lambda: validate_response(text[:25_000], CANDIDATES, CATALOG_IDS),
                       lambda: validate_response(text, CANDIDATES, CATALOG_IDS), 8)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------

def test_valid_exposures_in_order():
    report = validate_response(f"{m(COFFEE)} then {m(RUNNERS)}", CANDIDATES, CATALOG_IDS)
    assert report.exposed_ids == ("Ad-2008", "Ad-4820")
    assert report.num_ads == 2 and not report.has_format_error


@pytest.mark.parametrize("title", [
    "stridewell road runners", "Stridewell Road Runners ", " Stridewell Road Runners",
    "Stridewell  Road Runners", "Stridewell Road", "Trailfox Grip Shoes",
])
def test_title_mismatch_requires_exact_title(title):
    report = validate_response(f"Try @{title}@[Ad-4820].", CANDIDATES, CATALOG_IDS)
    assert report.exposed_ids == ()
    assert [(i.kind, i.ad_id) for i in report.issues] == [(MentionError.TITLE_MISMATCH, "Ad-4820")]


def test_unknown_and_non_candidate_ids():
    assert kinds("@Summit Ember Boots@[Ad-7211]") == [MentionError.NON_CANDIDATE]
    assert kinds("@Ghost Shoes@[Ad-0000]") == [MentionError.UNKNOWN_ID]
    # without the catalog every non-candidate ID is unknown
    assert kinds("@Summit Ember Boots@[Ad-7211]", None) == [MentionError.UNKNOWN_ID]


def test_duplicate_counts_once_as_exposure():
    text = f"{m(RUNNERS)} ... {m(RUNNERS)} ... {m(RUNNERS)}"
    report = validate_response(text, CANDIDATES, CATALOG_IDS)
    assert report.exposed_ids == ("Ad-4820",)
    assert [i.kind for i in report.issues] == [MentionError.DUPLICATE] * 2
    assert report.issues[0].start > report.valid[0].end


def test_mismatch_then_exact_title_is_valid():
    text = f"@stridewell@[Ad-4820] and {m(RUNNERS)}"
    report = validate_response(text, CANDIDATES, CATALOG_IDS)
    assert report.exposed_ids == ("Ad-4820",)
    assert [i.kind for i in report.issues] == [MentionError.TITLE_MISMATCH]


def test_issues_sorted_and_counted():
    text = (f"[Ad-4820] {m(RUNNERS)} @X@[Ad-0000] {m(RUNNERS)} @Summit Ember Boots@[Ad-7211] "
            f"@stridewell@[Ad-4820] @Runners@")
    report = validate_response(text, CANDIDATES, CATALOG_IDS)
    assert [i.kind for i in report.issues] == [
        MentionError.MALFORMED, MentionError.UNKNOWN_ID, MentionError.DUPLICATE,
        MentionError.NON_CANDIDATE, MentionError.TITLE_MISMATCH, MentionError.MALFORMED]
    assert report.error_counts() == {"malformed": 2, "unknown_id": 1, "title_mismatch": 1,
                                     "duplicate": 1, "non_candidate": 1}
    assert report.num_errors == 6 and report.has_format_error


def test_error_counts_has_every_kind():
    counts = validate_response("no ads here", CANDIDATES).error_counts()
    assert counts == {k.value: 0 for k in MentionError}
    assert set(counts) == {"malformed", "unknown_id", "title_mismatch", "duplicate",
                           "non_candidate"}


def test_strip_mentions_keeps_malformed_text():
    text = f"Try {m(RUNNERS)}, not @Runners@."
    assert strip_mentions(text) == "Try Stridewell Road Runners, not @Runners@."


# ------------------------------------------------------------------------------------------------
# penalty and reward
# ------------------------------------------------------------------------------------------------

DOC_ANSWER = (f"Try {m(RUNNERS)} for road miles, fuel up with\n{m(COFFEE)}, and for trails "
              "@Trailfox Grip@[Ad-8617].")
BIDS = {"Ad-4820": 60.0, "Ad-2008": 30.0, "Ad-8617": 40.0}
PCTR = {"Ad-4820": 0.5, "Ad-2008": 0.2, "Ad-8617": 0.3}


def _report(n_ads: int, **errors: int) -> MentionReport:
    valid = tuple(Mention("T", f"Ad-{i:04d}", 0, 1) for i in range(n_ads))
    issues = tuple(Issue(MentionError(kind), "x", 0, 1, None)
                   for kind, count in errors.items() for _ in range(count))
    return MentionReport(valid, issues)


def test_penalty_zero_for_empty_answer():
    assert format_penalty(validate_response("Just an answer.", CANDIDATES), PenaltyConfig()) == 0.0


def test_penalty_worked_example_from_doc():
    report = validate_response(DOC_ANSWER, CANDIDATES, CATALOG_IDS)
    assert report.exposed_ids == ("Ad-4820", "Ad-2008")
    assert [i.kind for i in report.issues] == [MentionError.TITLE_MISMATCH]
    assert format_penalty(report, PenaltyConfig()) == 70.0
    assert paper_reward(report, BIDS, PCTR, PenaltyConfig()) == pytest.approx(-34.0)
    clean = validate_response(DOC_ANSWER.split(", and")[0], CANDIDATES, CATALOG_IDS)
    assert format_penalty(clean, PenaltyConfig()) == 20.0
    assert paper_reward(clean, BIDS, PCTR, PenaltyConfig()) == pytest.approx(16.0)
    one = validate_response(f"Try {m(RUNNERS)}.", CANDIDATES, CATALOG_IDS)
    assert paper_reward(one, BIDS, PCTR, PenaltyConfig()) == pytest.approx(25.0)


def test_penalty_formula_with_custom_weights():
    config = PenaltyConfig(per_ad=1, free_ads=2, flooding=100, malformed=1000, unknown_id=10_000,
                           title_mismatch=100_000, non_candidate=1_000_000, duplicate=10_000_000)
    report = _report(3, malformed=1, unknown_id=2, title_mismatch=3, non_candidate=4, duplicate=5)
    assert format_penalty(report, config) == 3 + 100 + 1000 + 20_000 + 300_000 + 4_000_000 \
        + 50_000_000


@pytest.mark.parametrize("kind", [k.value for k in MentionError])
def test_penalty_monotone_in_each_error_count(kind):
    config = PenaltyConfig()
    values = [format_penalty(_report(1, **{kind: c}), config) for c in range(5)]
    assert getattr(config, kind) > 0
    assert all(b - a == getattr(config, kind) for a, b in itertools.pairwise(values))


def test_penalty_grows_with_ads_and_floods():
    config = PenaltyConfig()
    values = [format_penalty(_report(n), config) for n in range(5)]
    assert values == [0.0, 5.0, 20.0, 35.0, 50.0]
    assert format_penalty(_report(0, malformed=1), dataclasses.replace(config, malformed=0)) == 0


def test_paper_reward_lambda_and_clicks():
    report = validate_response(f"{m(RUNNERS)} and {m(COFFEE)}", CANDIDATES, CATALOG_IDS)
    clicks = {"Ad-4820": 1, "Ad-2008": 0}
    assert paper_reward(report, BIDS, clicks, PenaltyConfig()) == pytest.approx(60 - 20)
    assert paper_reward(report, BIDS, clicks, PenaltyConfig(), lam=0.5) == pytest.approx(60 - 10)
    assert paper_reward(report, BIDS, clicks, PenaltyConfig(), lam=0.0) == pytest.approx(60)


def test_paper_reward_needs_bid_and_ctr_of_exposed_ads():
    report = validate_response(m(RUNNERS), CANDIDATES, CATALOG_IDS)
    with pytest.raises(KeyError):
        paper_reward(report, BIDS, {}, PenaltyConfig())
    with pytest.raises(KeyError):
        paper_reward(report, {}, PCTR, PenaltyConfig())
