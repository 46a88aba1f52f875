"""Click judges: the simulated user deciding which inserted ads to click (docs/clicks.md).

Importing this package registers every judge: 'embedding' (default), 'llm' and 'logprob'.
"""

from llmauction_sim.clicks.base import (
    ClickDecision,
    ClickJudge,
    ClickModel,
    ClickRequest,
    judge_names,
    keep_one_per_group,
    make_judge,
    register_judge,
)
from llmauction_sim.clicks.embedding import EmbeddingJudge, mention_nativeness
from llmauction_sim.clicks.llm import LLMJudge, ParsedClicks, parse_click_output
from llmauction_sim.clicks.logprob import LogprobJudge

__all__ = [
    "ClickDecision", "ClickJudge", "ClickModel", "ClickRequest", "EmbeddingJudge", "LLMJudge",
    "LogprobJudge", "ParsedClicks", "judge_names", "keep_one_per_group", "make_judge",
    "mention_nativeness", "parse_click_output", "register_judge",
]
