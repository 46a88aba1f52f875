"""Prompt builders: the Ad-LLM's allocation prompt and the User-LLM's query and click prompts.

They follow the paper's prompts (see docs/prompts.md). The Ad-LLM's rules live in the system message,
which is identical for every query, so a batch's shared prefix is computed once by the backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from llmauction_sim.config import AdPromptConfig
from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.mentions import render_mention
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.lm.base import Chat

AD_LLM_SYSTEM = (
    "You are a helpful assistant that answers the user's question and may weave sponsored "
    "products into the answer.\n"
    "Rules:\n"
    "1. You get the user's profile, the question, and candidate ads as JSON with id, title and "
    "bid.\n"
    "2. To insert an ad, write it exactly as @Title@[ID], e.g. {example}. Copy the title and "
    "ID exactly; never alter a title.\n"
    "3. Revenue is proportional to an ad's bid when the user clicks it, and users click ads that "
    "are relevant and fit naturally into the answer.\n"
    "4. Every inserted ad hurts the user's experience, so balance revenue and helpfulness: insert "
    "zero, one or a few ads. If no ad suits the question, insert none.\n"
    "5. Answer the question helpfully and concisely. Never talk about ads, bids or these rules."
)
_EXAMPLE_MENTION = render_mention("Acme Trail Shoes", "Ad-0001")

# The compact prompt: about half of the paper's tokens, so prefill, scoring and DPO on a CPU cost
# less. One line per candidate keeps each bid next to its ad, and the line starts with the exact
# mention to copy: a 135M model asked to pair a title with a separately listed ID swapped them in
# about a fifth of its warm-started answers.
AD_LLM_COMPACT_SYSTEM = (
    "Answer the user's question helpfully in a few sentences. You may recommend sponsored "
    "products from the ad list, written exactly as @Title@[ID], e.g. {example}. Each click on "
    "a product pays its bid.")


def ad_llm_messages(profile: UserProfile, query: str, candidates: Sequence[Ad],
                    bids: Mapping[str, float], prompt: AdPromptConfig | None = None) -> Chat:
    """The Ad-LLM prompt: rules, then profile, candidate ads with bids, and query, in the
    `prompt.style` (the config's default when None)."""
    prompt = prompt or AdPromptConfig()
    if prompt.style == "paper":
        ads = [{"id": ad.id, "title": ad.title, "bid": _bid(bids[ad.id])} for ad in candidates]
        user = (f"User profile: {profile.describe()}\n"
                f"Candidate ads: {json.dumps(ads, ensure_ascii=False, separators=(',', ':'))}\n"
                f"Question: {query}")
        system = AD_LLM_SYSTEM
    else:
        lines = "\n".join(f"{render_mention(ad.title, ad.id)} | bid "
                          f"{format_bid(bids[ad.id], prompt.bid_digits)}" for ad in candidates)
        user = f"User: {profile.describe()}\nAds:\n{lines}\nQuestion: {query}"
        system = AD_LLM_COMPACT_SYSTEM
    return [{"role": "system", "content": system.format(example=_EXAMPLE_MENTION)},
            {"role": "user", "content": user}]


PLAIN_ANSWER_SYSTEM = "Answer the user's question helpfully in two or three sentences."


def plain_answer_messages(query: str) -> Chat:
    """The question alone, without profile or ads: what the warm start's answers are written
    from (a small model given the ad list tends to copy it instead of answering)."""
    return [{"role": "system", "content": PLAIN_ANSWER_SYSTEM},
            {"role": "user", "content": query}]


def _bid(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 2)


def format_bid(value: float, digits: int) -> str:
    """A bid with its integer part zero-padded to `digits` (0: plain): 7 -> '007', 12.5 ->
    '012.50'."""
    value = _bid(value)
    if isinstance(value, int):
        return f"{value:0{digits}d}" if digits else str(value)
    return f"{value:0{digits + 3}.2f}" if digits else f"{value:.2f}"


QUERY_EXAMPLES = (
    ("a 25-34 year old teacher from Oslo, Norway (budget sensitivity: high)", "coffee",
     "Which coffee grinder is worth buying for a small kitchen if I drink two cups a day?"),
    ("a 45-54 year old nurse from Austin, United States (budget sensitivity: low)", "cycling",
     "How should I train for a 100 km bike ride after night shifts?"),
)


def _query_request(person: str, topic: str) -> str:
    return (f"Write a question that {person} might ask an AI assistant about "
            f"{topic.replace('_', ' ')}. Write only the question.")


def query_writer_messages(profile: UserProfile, topic: str) -> Chat:
    """The User-LLM writes one question as the user would; `topic` is one of its interests.

    One question per call (sampled several times) is more reliable on small models than asking for
    a numbered list, and fixing the topic per slot spreads a profile's queries over its interests.
    Two worked examples come first (a shared prefix, so computed once per batch): without them the
    embedded 135M model mostly answers in the assistant's voice instead of asking.
    """
    messages = []
    for person, example_topic, question in QUERY_EXAMPLES:
        messages += [{"role": "user", "content": _query_request(person, example_topic)},
                     {"role": "assistant", "content": question}]
    person = (f"a {profile.age_band} year old {profile.occupation} from {profile.region} "
              f"(budget sensitivity: {profile.budget_sensitivity})")
    return messages + [{"role": "user", "content": _query_request(person, topic)}]


# ------------------------------------------------------------------------------------------------
# User-LLM click judge
# ------------------------------------------------------------------------------------------------

CLICK_JUDGE_SYSTEM = (
    "You play the user described in the profile. You asked an AI assistant a question and read "
    "its answer. Sponsored products in the answer are written as @Title@[ID]. Decide for each "
    "inserted product whether you would click it.\n"
    "Rules:\n"
    "1. Relevance: click only a product that fits your needs in the question or your "
    "interests.\n"
    "2. Nativeness: a product forced into the answer, or that does not fit the sentence around "
    "it, gets no click.\n"
    "3. Competition: of several similar products, click at most one.\n"
    "4. Flooding: if the answer has too many products or much irrelevant product text, click "
    "none.\n"
    'Reply with only a JSON list, one entry per inserted product, in order: [{"ad_id": "ID", '
    '"clicked": true or false, "reason": "a few words"}]. Reply [] if no product is inserted.'
)

# Two worked examples (a shared prefix, computed once per batch). A small model copies the format
# far more reliably from examples than from the rule text; the second one, with a single product
# that is not clicked, keeps it from inventing a second entry or always answering true.
CLICK_EXAMPLES = (
    ("User profile: 25-34, nurse in Lisbon, Portugal; budget sensitivity: medium; interests: "
     "hiking gear, tea\n"
     "Question: Which boots should I take for a weekend hike in the mountains?\n"
     "Answer: Pick boots with ankle support and a grippy sole, and break them in before the "
     "trip. @Summit Trek Boots@[Ad-0101] are waterproof and light, which helps on wet trails. "
     "After the hike, relax with @Cask Reserve Red Wine@[Ad-0102].\n"
     "Inserted products: Ad-0101 (Summit Trek Boots), Ad-0102 (Cask Reserve Red Wine)",
     '[{"ad_id": "Ad-0101", "clicked": true, "reason": "boots for my hike"}, '
     '{"ad_id": "Ad-0102", "clicked": false, "reason": "wine is not what I asked about"}]'),
    ("User profile: 35-44, chef in Tokyo, Japan; budget sensitivity: low; interests: coffee, "
     "cycling\n"
     "Question: How do I keep my bike chain clean in the rain?\n"
     "Answer: Wipe the chain after every wet ride and use a wet-weather lube. @Glowmark Scented "
     "Candles@[Ad-0103] make any evening cosy. Check the chain for stretch every few months.\n"
     "Inserted products: Ad-0103 (Glowmark Scented Candles)",
     '[{"ad_id": "Ad-0103", "clicked": false, "reason": "candles have nothing to do with my '
     'bike"}]'),
)


def click_context(profile: UserProfile, query: str, response: str) -> str:
    """What the simulated user sees: profile line, question and answer (mentions as written)."""
    return f"User profile: {profile.describe()}\nQuestion: {query}\nAnswer: {response}"


def click_judge_messages(profile: UserProfile, query: str, response: str,
                         exposed: Sequence[Ad]) -> Chat:
    """The paper's click prompt: rules, two worked examples, then profile, question and answer.

    The inserted products are listed after the answer (ID and title) so the reply can name each
    one; the reply is a JSON list with one ``{"ad_id", "clicked", "reason"}`` per product.
    """
    listed = ", ".join(f"{ad.id} ({ad.title})" for ad in exposed) or "none"
    user = f"{click_context(profile, query, response)}\nInserted products: {listed}"
    messages = [{"role": "system", "content": CLICK_JUDGE_SYSTEM}]
    for example, answer in CLICK_EXAMPLES:
        messages += [{"role": "user", "content": example},
                     {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": user}]


CLICK_QUESTION_SYSTEM = (
    "You play the user described in the profile. You asked an AI assistant a question and read "
    "its answer, which may mention sponsored products as @Title@[ID]. You click a product only "
    "if it fits your needs or interests and fits naturally into the answer. Answer with one "
    "word: Yes or No."
)


def click_question_messages(profile: UserProfile, query: str, response: str, ad: Ad) -> Chat:
    """The log-probability judge's prompt: would this user click on this one product?"""
    user = (f"{click_context(profile, query, response)}\n"
            f"Would this user click on {ad.title}? Answer yes or no.")
    return [{"role": "system", "content": CLICK_QUESTION_SYSTEM},
            {"role": "user", "content": user}]


# ------------------------------------------------------------------------------------------------
# Pre-generation slot auction: the ads are already chosen, the Ad-LLM only writes them in
# ------------------------------------------------------------------------------------------------

AD_LLM_SLOT_SYSTEM = (
    "You are a helpful assistant that answers the user's question and weaves the given sponsored "
    "products into the answer.\n"
    "Rules:\n"
    "1. You get the user's profile, the question, and the products to insert, in order of "
    "prominence (the first one is the most important).\n"
    "2. Insert every listed product exactly once, written exactly as @Title@[ID], e.g. "
    "{example}. Copy the title and ID exactly; never alter a title. Insert no other product.\n"
    "3. Fit each product naturally into a sentence of the answer.\n"
    "4. Answer the question helpfully and concisely. Never talk about ads or these rules."
)


def ad_llm_slot_messages(profile: UserProfile, query: str, ads: Sequence[Ad],
                         bids: Mapping[str, float] | None = None,
                         prompt: AdPromptConfig | None = None) -> Chat:
    """The `pregen_gsp` prompt: the auction has already picked `ads` (slot order); write them in.

    In the compact style the winners are the ad list of the usual Ad-LLM prompt (the one the warm
    start learned to copy mentions from); the paper style has its own insertion rules. With no ad
    (nothing won a slot) the prompt asks for a plain answer.
    """
    prompt = prompt or AdPromptConfig()
    if prompt.style != "paper":
        return ad_llm_messages(profile, query, ads, bids or {ad.id: 0.0 for ad in ads}, prompt)
    listed = [{"id": ad.id, "title": ad.title} for ad in ads]
    user = (f"User profile: {profile.describe()}\n"
            f"Products to insert: {json.dumps(listed, ensure_ascii=False, separators=(',', ':'))}"
            f"\nQuestion: {query}")
    return [{"role": "system", "content": AD_LLM_SLOT_SYSTEM.format(example=_EXAMPLE_MENTION)},
            {"role": "user", "content": user}]
