"""Configuration objects: one dataclass per concern, every field with a default and a help text.

The same objects load from a TOML file (`RunConfig.load`), from a dict, and from CLI overrides of the
form ``section.field=value``. Unknown keys and bad values raise `ConfigError` naming the field.

`RunConfig` checks its retrieval settings against the ad catalog, so this module sits above
`domain.catalog`; the domain does not import it (its functions take the values they need).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmauction_sim.domain.catalog import CatalogError, load_catalog
from llmauction_sim.paths import accelerate_config


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the field and the fix."""


class _UnsupportedType(ConfigError):
    """A field type the config files cannot spell (raised by `_coerce`)."""


def option(default: Any, help: str, *, choices: Iterable[Any] | None = None,
           min: float | None = None, max: float | None = None, exclusive_min: bool = False) -> Any:
    """A dataclass field with a help text and simple bounds checked on construction."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "exclusive_min": exclusive_min}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def plugin_tables(kind: str) -> Any:
    """The field of a section that also holds, under their registered names, the settings tables
    of entries whose config classes live elsewhere (plugins: ``[mechanisms.my_mechanism]``)."""
    return field(default_factory=dict, metadata={
        "help": f"Settings tables of other {kind}s, by registered name.", "plugins": kind})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn `value` (from TOML or a CLI string) into type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not a valid " + " or ".join(
            _type_name(a) for a in args))
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, typing._LiteralGenericAlias):  # type: ignore[attr-defined]
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
    raise _UnsupportedType(f"{where}: unsupported type {tp!r}")


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    name = f"{where}.{key}" if where else key
    return ConfigError(f"unknown config field '{name}'.{hint} Known fields here: {', '.join(known)}")


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{where} = nan is not a number; give a finite value")
    if isinstance(value, float) and value in (math.inf, -math.inf):
        raise ConfigError(f"{where} = {value} is not finite; give a finite value")


class ConfigBase:
    """Mixin for config dataclasses: validation on construction, dict/TOML round trip, overrides."""

    def __post_init__(self) -> None:
        self._check_fields()
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses override and raise ConfigError."""

    def _check_fields(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                continue
            if f.metadata.get("plugins"):
                if not isinstance(value, Mapping) or not all(
                        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()):
                    raise ConfigError(f"{f.name}: expected tables of settings by "
                                      f"{f.metadata['plugins']} name, got {value!r}")
                object.__setattr__(self, f.name, {k: dict(v) for k, v in value.items()})
                continue
            where = f.name
            value = _coerce(value, hints[f.name], where)
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            if isinstance(value, list):
                for item in value:
                    _check_finite(item, where)
            if value is None or isinstance(value, (list, str, bool)) and not meta.get("choices"):
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{where} = {value!r} is not allowed; choose one of "
                                  f"{list(meta['choices'])}")
            _check_finite(value, where)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lo, hi = meta.get("min"), meta.get("max")
                if lo is not None and (value <= lo if meta.get("exclusive_min") else value < lo):
                    op = ">" if meta.get("exclusive_min") else ">="
                    raise ConfigError(f"{where} = {value!r} is out of range; it must be {op} {lo}")
                if hi is not None and value > hi:
                    raise ConfigError(f"{where} = {value!r} is out of range; it must be <= {hi}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = ""):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a table of fields, got {data!r}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        tables = _plugin_field(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known or key == tables:
                if tables and isinstance(value, Mapping):  # a plugin entry's settings
                    kwargs.setdefault(tables, {})[key] = dict(value)
                    continue
                raise _unknown_key(key, [k for k in known if k != tables], where)
            tp = hints[key]
            if isinstance(tp, type) and issubclass(tp, ConfigBase):
                # A partly given section keeps this field's own defaults (which may differ from
                # the section class's defaults, e.g. user_sampling's temperature).
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where + '.' if where else ''}{key} is a section; give "
                                      f"it as a table of fields, not {value!r}")
                base = known[key].default_factory().to_dict()  # type: ignore[misc]
                kwargs[key] = tp.from_dict({**base, **value}, f"{where}.{key}" if where else key)
            else:
                kwargs[key] = value
        return _construct(cls, kwargs, where)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts, as in a TOML file (plugin tables beside the section's fields)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                out[f.name] = value.to_dict()
            elif f.metadata.get("plugins"):
                out.update(copy.deepcopy(value))
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    def replace(self, **changes: Any):
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict(merged)

    def with_overrides(self, overrides: Iterable[str]):
        """Apply ``a.b=value`` strings (as given on the CLI) and return a new validated config."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.field=value")
            path, raw = item.split("=", 1)
            keys = self.current_path(path.strip()).split(".")
            node, cls = data, type(self)
            for i, key in enumerate(keys):
                tables = _plugin_field(cls)
                known = [f.name for f in dataclasses.fields(cls) if f.name != tables]
                if key not in known and tables and i < len(keys) - 1:
                    # A plugin entry's table: its fields are checked when the entry is built.
                    for inner in keys[i:-1]:
                        node = node.setdefault(inner, {})
                        if not isinstance(node, dict):
                            raise ConfigError(f"'{path}': {inner} is a field, not a table")
                    node[keys[-1]] = raw.strip()
                    break
                if key not in known:
                    raise _unknown_key(key, known, ".".join(keys[:i]))
                if i == len(keys) - 1:
                    if isinstance(node[key], dict):
                        raise ConfigError(f"'{path}' is a section; set one of its fields, "
                                          f"e.g. {path}.{next(iter(node[key]))}=...")
                    node[key] = raw.strip()
                else:
                    if not isinstance(node[key], dict):
                        raise ConfigError(f"'{'.'.join(keys[:i + 1])}' is a field, not a section")
                    node = node[key]
                    cls = typing.get_type_hints(cls)[key]
        return type(self).from_dict(data)

    @classmethod
    def current_path(cls, path: str) -> str:
        """The dotted field name `path` now has (subclasses map renamed fields)."""
        return path

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing TOML file "
                              f"(write a template with `llmauction config show > run.toml`)")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
        return cls.from_dict(data).with_overrides(overrides)


def _plugin_field(cls: type) -> str | None:
    """Name of the section's plugin-tables field, or None."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("plugins"):
            return f.name
    return None


def plugin_tables_of(section: ConfigBase) -> dict[str, dict]:
    """The plugin tables a section holds, by entry name ({} for a section without them)."""
    tables = _plugin_field(type(section))
    return getattr(section, tables) if tables else {}


def entry_settings(section: ConfigBase, name: str, config_class: type | None, where: str) -> Any:
    """Settings of the registered entry `name` from its table in config `section` (e.g.
    ``config.mechanisms``, `where` = "mechanisms"): the section's own field of that name where it
    has one (the built-ins), else `config_class` built from the plugin table (defaults where the
    table is silent); None for an entry without a config class."""
    own = getattr(section, name, None) if name != _plugin_field(type(section)) else None
    if isinstance(own, ConfigBase):
        return own
    table = plugin_tables_of(section).get(name, {})
    if config_class is None:
        if table:
            raise ConfigError(f"{where}.{name} sets {', '.join(sorted(table))}, but {name!r} has "
                              "no settings (it was registered without a config_class); remove "
                              f"the [{where}.{name}] table")
        return None
    return build_settings(config_class, table, f"{where}.{name}")


def build_settings(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """The dataclass `cls` from a table of raw values (TOML values or CLI strings), each coerced
    to its field's type; unknown fields and bad values raise ConfigError naming them."""
    if issubclass(cls, ConfigBase):
        return cls.from_dict(table, where)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise _unknown_key(key, known, where)
        try:
            kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
        except _UnsupportedType:
            kwargs[key] = value  # a type the config files cannot spell: passed as given
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _construct(cls, kwargs: dict[str, Any], where: str):
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if where:
            raise ConfigError(f"{where}.{exc}") from None
        raise
    except TypeError as exc:  # a missing or extra constructor argument
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def field_docs(cls: type, prefix: str = "", instance: Any = None
               ) -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, help) for every field, nested sections flattened."""
    instance = instance if instance is not None else cls()
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("plugins"):
            continue
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        value = getattr(instance, f.name)
        if isinstance(tp, type) and issubclass(tp, ConfigBase):
            rows.extend(field_docs(tp, name + ".", value))
            continue
        type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append((name, type_name, value, f.metadata.get("help", "")))
    return rows


# --------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    name: str = option("smollm2-135m-instruct",
                       "Registered model name, Hugging Face id or local checkpoint folder.")
    backend: str = option("transformers", "Generation backend: 'transformers' (CPU or GPU) or "
                          "'vllm' (GPU, the gpu extra).", choices=["transformers", "vllm"])
    dtype: str = option("auto", "Weights/compute dtype; auto = bfloat16 where the CPU supports it, "
                        "else float32 (bfloat16 on CUDA).",
                        choices=["auto", "float32", "bfloat16", "float16"])
    device: str = option("auto", "torch device; auto = cuda if available, else cpu.")
    max_batch_size: int = option(64, "Rows per forward pass in batched generation/scoring.", min=1)
    adapter: str | None = option(None, "Optional PEFT adapter folder loaded on top of the model.")
    cpu_kernels: bool = option(True, "CPU float32 only: decode-step linears on oneDNN-prepacked "
                               "copies of the weights (faster generation; weight memory doubles), "
                               "SwiGLU in place and decode attention on a numba kernel. Off for "
                               "large models on small-memory CPUs.")


@dataclass(frozen=True)
class SamplingConfig(ConfigBase):
    temperature: float = option(0.7, "Softmax temperature; 0 means greedy.", min=0.0)
    top_p: float = option(0.8, "Nucleus sampling mass (1 = off).", min=0.0, max=1.0,
                          exclusive_min=True)
    top_k: int = option(20, "Keep the k most likely tokens (0 = off).", min=0)
    max_new_tokens: int = option(160, "Maximum tokens generated per answer.", min=1)


@dataclass(frozen=True)
class AdPromptConfig(ConfigBase):
    """How the Ad-LLM's prompt lists the auction (docs/prompts.md)."""
    style: str = option("compact", "'compact': short rules and one line per candidate (ID | title "
                        "| bid), for small models on a CPU; 'paper': the paper's rules and the "
                        "candidates as JSON.", choices=["compact", "paper"])
    bid_digits: int = option(3, "compact: bids written with this many integer digits, zero-padded "
                             "(bid 007, bid 087, bid 100), so a bid's leading digit carries the "
                             "same weight in every line; 0 = as plain numbers.", min=0)


@dataclass(frozen=True)
class RetrievalConfig(ConfigBase):
    num_candidates: int | str = option(
        4, "Candidate ads put in the Ad-LLM prompt (top-K by relevance), or 'all' for the whole "
        "catalog as in the paper (4 keeps the prompt short and the choice one the embedded "
        "model can learn; docs/irpo.md).")
    encoder: str = option("all-minilm-l6-v2", "Sentence encoder for relevance: the packaged "
                          "MiniLM name, or a sentence-transformers model id/folder.")
    profile_weight: float = option(0.35, "Weight of the profile's interests against the query "
                                   "when ranking ads.", min=0.0, max=1.0)

    def validate(self) -> None:
        k = self.num_candidates
        if isinstance(k, str) and k != "all":
            try:
                k = int(k)
            except ValueError:
                raise ConfigError(f"num_candidates = {k!r}: use a positive integer or "
                                  "'all'") from None
            object.__setattr__(self, "num_candidates", k)
        if isinstance(k, int) and k < 1:
            raise ConfigError(f"num_candidates = {k} must be >= 1 (or 'all')")


@dataclass(frozen=True)
class PenaltyConfig(ConfigBase):
    """Format penalty s_resp(y), in bid units (see docs/format_penalty.md)."""
    per_ad: float = option(5.0, "Cost of each validly inserted ad (user-experience load).", min=0)
    free_ads: int = option(1, "Ads that may be inserted before `flooding` applies.", min=0)
    flooding: float = option(10.0, "Extra cost of each valid ad beyond `free_ads`.", min=0)
    malformed: float = option(50.0, "Cost of each malformed mention (broken @...@[...] markup).",
                              min=0)
    unknown_id: float = option(50.0, "Cost of a mention whose ID is in no candidate list "
                               "nor the catalog.", min=0)
    title_mismatch: float = option(50.0, "Cost of a mention whose title differs from the "
                                   "candidate's exact title.", min=0)
    non_candidate: float = option(50.0, "Cost of a well-formed mention of a real ad that was not "
                                  "among this query's candidates.", min=0)
    duplicate: float = option(20.0, "Cost of each repeated mention of an already inserted ad.",
                              min=0)


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    profiles: int = option(3000, "Number of synthetic user profiles.", min=1)
    queries_per_profile: int = option(5, "Queries the User-LLM writes per profile.", min=1)
    test_fraction: float = option(0.2, "Share of profiles whose queries form the test split.",
                                  min=0.0, max=1.0)
    query_writer: str = option("llm", "Who writes queries: the User-LLM ('llm') or, only when "
                               "asked for by name, fixed templates ('template').",
                               choices=["llm", "template"])
    max_attempts: int = option(4, "Rounds of re-sampling for profiles whose queries failed "
                               "validation.", min=1)
    uncovered_interest_rate: float = option(
        0.25, "Probability that a profile interest is one the catalog does not cover.",
        min=0.0, max=1.0)
    catalog: str | None = option(None, "Path to an ad catalog JSON; default: the packaged one.")


@dataclass(frozen=True)
class EmbeddingJudgeConfig(ConfigBase):
    """The `embedding` click judge: a transparent click model on MiniLM embeddings."""
    bias: float = option(-6.3, "Click logit of a single ad with zero relevance and zero "
                         "nativeness.")
    relevance_weight: float = option(14.0, "Logit gain per unit of relevance (cosine of the ad "
                                     "to the query, blended with its cosine to the user's "
                                     "interests).", min=0)
    profile_weight: float = option(0.35, "Weight of the user's interests against the query in an "
                                   "ad's relevance.", min=0.0, max=1.0)
    nativeness_weight: float = option(1.5, "Logit gain of a mention fully woven into a sentence "
                                      "(nativeness 1) over one dumped on its own "
                                      "(nativeness 0).", min=0)
    fatigue: float = option(0.5, "Logit cost, for every inserted ad, of each inserted ad beyond "
                            "the first (flooding).", min=0)
    duplicate_similarity: float = option(0.6, "Ads of one category, or with cosine at least "
                                         "this, compete: at most one of them is clicked.",
                                         min=-1.0, max=1.0)


@dataclass(frozen=True)
class LlmJudgeConfig(ConfigBase):
    """The `llm` click judge: the paper's JSON click prompt to the User-LLM."""
    max_new_tokens: int = option(96, "Token budget of the judge's JSON answer.", min=1)


@dataclass(frozen=True)
class ClickConfig(ConfigBase):
    """The User-LLM's click decisions (see docs/clicks.md): which judge, and each judge's own
    settings in the table of its name (``[clicks.embedding]``; a plugin judge's too)."""
    judge: str = option("embedding", "Click judge: 'embedding' (transparent MiniLM click model), "
                        "'llm' (the paper's JSON click prompt) or 'logprob' (P(yes) per ad from "
                        "the User-LLM's log-probabilities).")
    embedding: EmbeddingJudgeConfig = section(EmbeddingJudgeConfig, "The 'embedding' judge.")
    llm: LlmJudgeConfig = section(LlmJudgeConfig, "The 'llm' judge.")
    plugins: dict[str, dict] = plugin_tables("click judge")


@dataclass(frozen=True)
class MarketConfig(ConfigBase):
    """The stepped market (docs/market.md)."""
    steps: int = option(10, "Rounds to simulate.", min=1)
    queries_per_step: int = option(8, "Queries asked per round; all go to the Ad-LLM in one "
                                   "batched call.", min=1)
    mechanism: str = option("llm_auction_tilted", "Auction mechanism, by registered name "
                            "(default: the paper's optimal policy applied at decoding time on "
                            "the shipped warm start; docs/mechanisms.md).")
    bidding: str = option("uniform_per_query", "Advertisers' bid policy: 'uniform_per_query' "
                          "(paper: integer bid drawn uniformly per query), 'fixed' (one bid per "
                          "ad, drawn once), a learner ('value_maximizer', 'utility_maximizer', "
                          "'truthful') for every ad, or a population like 'vm:50,um:50'.")
    bid_low: int = option(1, "Lowest bid.", min=0)
    bid_high: int = option(100, "Highest bid.", min=1)
    value_low: float = option(1.0, "Lowest private value per click (uniform draw per "
                              "advertiser).", min=0)
    value_high: float = option(100.0, "Highest private value per click.", min=0)
    data: str | None = option(None, "Folder of a `llmauction data build`; default: build a small "
                              "one (data.* settings) inside the run folder.")
    surrogate_rounds: int = option(0, "Bidding rounds on the allocation surrogate (fitted to the "
                                   "LLM rounds so far) after each LLM round; 0 = LLM only.", min=0)
    surrogate_auctions: int = option(0, "Auctions per surrogate round, replayed from logged "
                                     "contexts; 0 = queries_per_step.", min=0)
    split: str = option("train", "Which users ask: the train or the test split of the data.",
                        choices=["train", "test", "all"])
    rounds_per_epoch: int = option(
        0, "One market, two learners (`llmauction equilibrium` on a single-pass Ad-LLM "
        "mechanism): after every K LLM rounds one IRPO epoch trains the Ad-LLM on those rounds' "
        "auctions, bids and clicks, and later rounds use the new policy; 0 = the Ad-LLM stays "
        "fixed.", min=0)

    def validate(self) -> None:
        if self.bid_low > self.bid_high:
            raise ConfigError(f"bid_low = {self.bid_low} is above bid_high = {self.bid_high}; "
                              "make bid_low <= bid_high")
        if self.value_low > self.value_high:
            raise ConfigError(f"value_low = {self.value_low} is above value_high = "
                              f"{self.value_high}; make value_low <= value_high")


@dataclass(frozen=True)
class PregenGspConfig(ConfigBase):
    """`pregen_gsp`: a slot auction on bid x pCTR before generation, then the Ad-LLM writes the
    winners in."""
    slots: int = option(2, "Ad slots k filled by the top bid x pCTR scores.", min=1)
    slot_weights: list[float] = option(
        [1.0, 0.7], "Prominence weight of each slot (position effect); missing entries repeat "
        "the last one.")
    payment: str = option("gsp", "Payment per click: 'gsp' (next score / own pCTR), 'vcg' "
                          "(externality per expected click, with slot_weights) or 'first_price' "
                          "(own bid).", choices=["gsp", "vcg", "first_price"])


@dataclass(frozen=True)
class MosaicConfig(ConfigBase):
    """`mosaic`: post-generation selection among M sampled answers."""
    samples: int = option(20, "Answers M sampled per query in one generate call (paper's "
                          "baseline: 20).", min=1)
    tau: float = option(10.0, "Softmax temperature tau of the selection, in bid units.",
                        min=0.0, exclusive_min=True)
    penalty_weight: float = option(1.0, "Weight lambda of the format penalty in R(y).", min=0.0)
    correction: str = option(
        "exact", "Importance correction for samples drawn with ad_sampling rather than from the "
        "model itself: 'exact' weights each sample by pi_ref(y) / q(y) (q scored under the "
        "sampling temperature, top-k and top-p), so the selection targets pi_ref(y) "
        "exp(R(y)/tau); 'none' uses softmax(R/tau) over the samples (targets q(y) "
        "exp(R(y)/tau)).", choices=["exact", "none"])
    payment: str = option("first_price", "Payment per click: 'first_price' or 'rochet' "
                          "(MOSAIC's own rule, per unit of expected reward).",
                          choices=["first_price", "rochet"])


@dataclass(frozen=True)
class LlmAuctionConfig(ConfigBase):
    """`llm_auction`: one pass of the trained Ad-LLM."""
    checkpoint: str | None = option(
        None, "Model name or folder of the trained Ad-LLM (default ad_llm.name).")
    adapter: str | None = option(
        None, "PEFT adapter folder or packaged adapter name of the trained Ad-LLM (default "
        "ad_llm.adapter).")


@dataclass(frozen=True)
class TiltedConfig(ConfigBase):
    """`llm_auction_tilted`: the paper's optimal policy pi_0 exp(R/beta) at decoding time."""
    temperature: float = option(
        5.0, "Temperature T of the tilt exp(u/T), in bid units (the paper's beta); smaller is "
        "closer to the argmax of bid x pCTR, larger to pi_0.", min=0.0, exclusive_min=True)
    max_ads: int = option(2, "Most mentions per answer.", min=1)
    penalty_weight: float = option(1.0, "Weight lambda of the format penalty's per-ad cost in "
                                   "the utility u.", min=0.0)


@dataclass(frozen=True)
class MechanismConfig(ConfigBase):
    """Settings the mechanisms share, and each mechanism's own in the table of its name
    (``[mechanisms.mosaic]``; a plugin mechanism's too, checked against its config class)."""

    pctr_model: str = option(
        "judge", "Click model giving pCTR to mosaic, llm_auction_tilted and pregen_gsp: 'judge' "
        "(the probabilities of clicks.judge itself; that judge must have them, as 'embedding' "
        "and 'logprob' do, not 'llm'), 'embedding' (the MiniLM embedding click model, whatever "
        "decides clicks) or 'logprob' (the User-LLM's P(yes) per ad).",
        choices=["judge", "embedding", "logprob"])
    policy_adapter: str | None = option(
        "smollm2-135m-warmstart", "The Ad-LLM policy pi_0 of llm_auction (untrained), "
        "llm_auction_tilted, llm_auction_ranked, mosaic and pregen_gsp: a packaged adapter name "
        "or adapter folder on ad_llm.name. The default, the shipped format warm start of the "
        "embedded model (it writes the markup, bid-blind), applies to that model only; other "
        "models run as configured. None = ad_llm as configured (`pretrained` always is).")
    pregen_gsp: PregenGspConfig = section(PregenGspConfig, "The 'pregen_gsp' mechanism.")
    mosaic: MosaicConfig = section(MosaicConfig, "The 'mosaic' mechanism.")
    llm_auction: LlmAuctionConfig = section(LlmAuctionConfig, "The 'llm_auction' mechanism.")
    llm_auction_tilted: TiltedConfig = section(TiltedConfig, "The 'llm_auction_tilted' "
                                               "mechanism.")
    plugins: dict[str, dict] = plugin_tables("mechanism")


@dataclass(frozen=True)
class BidPolicyConfig(ConfigBase):
    """Each bid policy's own settings, in the table of its name (``[bid_policies.my_policy]``).
    The built-in policies take theirs from market.* (the bid range) and from the population
    spec (`vm:4:tau=1.2`)."""
    plugins: dict[str, dict] = plugin_tables("bid policy")


@dataclass(frozen=True)
class PctrConfig(ConfigBase):
    """The pCTR reward model: architecture, training and evaluation."""
    encoder: str = option("all-minilm-l6-v2", "Frozen sentence encoder over query and response: "
                          "the packaged MiniLM or any sentence-transformers model name or folder.")
    user_dim: int = option(64, "Size of the learned user-ID embedding.", min=1)
    ad_dim: int = option(32, "Size of the learned ad-ID embedding.", min=1)
    hidden: list[int] = option([128, 64, 32], "Hidden layer sizes of the MLP (ReLU).")
    learning_rate: float = option(1e-3, "Adam learning rate.", min=0, exclusive_min=True)
    batch_size: int = option(256, "Training batch size.", min=1)
    epochs: int = option(10, "Passes over the training rows.", min=1)
    min_steps: int = option(300, "At least this many optimizer steps (more passes over a small "
                            "click log, which ten epochs would leave nearly constant).", min=0)
    weight_decay: float = option(0.0, "Adam weight decay.", min=0)
    unknown_id_rate: float = option(0.05, "Share of training rows whose user/ad ID is replaced by "
                                    "the 'unknown' row, so that row is learned.", min=0, max=1)
    holdout_fraction: float = option(0.2, "Share of rows held out for the report when the click "
                                     "log has no `split` column.", min=0, max=0.9)
    calibration_bins: int = option(10, "Quantile bins of the calibration table.", min=1)
    predict_batch_size: int = option(4096, "Rows per forward pass at prediction time.", min=1)
    seed: int = option(0, "Seed of initialisation, shuffling and the holdout draw.")

    def validate(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden: {self.hidden!r} must be a non-empty list of positive sizes")


@dataclass(frozen=True)
class DpoConfig(ConfigBase):
    """One DPO phase of IRPO (TRL DPOTrainer)."""
    beta: float = option(0.1, "DPO temperature beta (KL strength to the phase's reference).",
                         min=0, exclusive_min=True)
    lora: bool = option(True, "Train a LoRA adapter (PEFT); false = full fine-tuning.")
    lora_r: int = option(16, "LoRA rank.", min=1)
    lora_alpha: int = option(32, "LoRA scaling alpha.", min=1)
    lora_dropout: float = option(0.0, "LoRA dropout.", min=0, max=1)
    lora_target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Modules that get LoRA adapters (all linear layers: attention alone barely moved the "
        "embedded model in a few DPO steps).")
    learning_rate: float = option(5e-4, "Peak learning rate (the paper uses 1e-6 with full "
                                  "fine-tuning of a 4B model; LoRA needs a far larger one).",
                                  min=0, exclusive_min=True)
    lr_scheduler: str = option("cosine", "Learning-rate schedule.",
                               choices=["cosine", "linear", "constant", "constant_with_warmup"])
    warmup_ratio: float = option(0.0, "Share of steps spent warming up (TrainingArguments' "
                                 "warmup_steps as a fraction); 0 trains at the peak rate from "
                                 "the first step, which a phase of a few steps needs.",
                                 min=0, max=0.99)
    epochs: float = option(1.0, "Passes over the phase's pairs.", min=0, exclusive_min=True)
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: run `epochs`).")
    batch_size: int = option(4, "Pairs per device batch.", min=1)
    gradient_accumulation_steps: int = option(1, "Batches per optimizer step.", min=1)
    max_length: int = option(640, "Longest prompt+response in tokens (longer ones are cut at "
                             "the end).", min=8)
    precompute_ref_log_probs: bool = option(True, "Compute the reference log-probs once before "
                                            "training (no second model held in memory).")
    bf16: bool = option(False, "bfloat16 autocast (off: fp32, exact on CPU).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass "
                                          "(saves memory for large models; slower on CPU).")
    logging_steps: int = option(1, "Log the trainer's metrics every this many steps.", min=1)
    seed: int = option(0, "Seed of data order and adapter initialisation.")
    launcher: str = option("", "Run the phase under `accelerate launch` with this config: a "
                           "shipped one (ddp, zero2, zero3) or a YAML path; empty = in process.")
    num_processes: int = option(0, "Processes (GPUs) for the launcher; 0 = the config's own.",
                                min=0)

    def validate(self) -> None:
        if self.launcher:
            try:
                accelerate_config(self.launcher)
            except FileNotFoundError as exc:
                raise ConfigError(str(exc)) from None
        if self.lora and not self.lora_target_modules:
            raise ConfigError("lora_target_modules: LoRA needs at least one target module")


@dataclass(frozen=True)
class WarmStartConfig(ConfigBase):
    """Format warm start before IRPO (docs/irpo.md): SFT on the policy's own answers with mentions
    of randomly chosen candidates inserted, so a small model can write the markup at all."""
    queries: int = option(96, "Training auctions whose own answers (with mentions inserted) are "
                          "the SFT set; 0 = no warm start (the paper's setting).", min=0)
    ads_per_answer: int = option(1, "Candidates, drawn uniformly regardless of bids, inserted "
                                 "per answer.", min=1)
    no_ad_rate: float = option(0.25, "Share of SFT answers left without a mention, so the policy "
                               "keeps a real choice of whether to show an ad.", min=0.0, max=1.0)
    max_sentences: int = option(2, "Sentences of the policy's own answer kept per SFT answer "
                                "(short answers put the mention early); 0 = all.", min=0)
    lora: bool = option(True, "Train a LoRA adapter; false = full fine-tuning.")
    learning_rate: float = option(1e-3, "SFT learning rate of the LoRA adapter (merged after).",
                                  min=0, exclusive_min=True)
    lora_r: int = option(16, "LoRA rank of the warm-start adapter.", min=1)
    lora_target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Modules that get the warm-start adapter (merged into the weights afterwards).")
    epochs: float = option(2.0, "Passes over the SFT set.", min=0, exclusive_min=True)
    batch_size: int = option(4, "Examples per batch.", min=1)
    seed: int = option(0, "Seed of data order and adapter initialisation.")


@dataclass(frozen=True)
class IrpoConfig(ConfigBase):
    """The IRPO loop (paper Algorithm 1; docs/irpo.md)."""
    epochs: int = option(3, "IRPO epochs (collect, refit pCTR, sample, pairs, DPO, evaluate).",
                         min=1)
    samples_per_query: int = option(10, "Answers the deployed policy writes per training query "
                                    "when collecting clicks.", min=1)
    candidates_per_prompt: int = option(5, "Answers M sampled per training prompt and scored "
                                        "with R for the preference pairs.", min=2)
    delta_th: float = option(10.0, "Reward gap (bid units) a loser must trail the winner by.",
                             min=0)
    reward: str = option("pctr", "Reward R: 'pctr' (learned pCTR model) or 'oracle' (the judge's "
                         "realised clicks).", choices=["pctr", "oracle"])
    kl_samples: int = option(16, "Sampled answers per epoch on which the new policy's KL to the "
                             "epoch's reference is estimated (two scoring passes); 0 = skip.",
                             min=0)
    max_pairs: int = option(0, "Keep at most this many preference pairs per epoch (a seeded "
                            "random subset; bounds the DPO phase's cost); 0 = all.", min=0)
    train_queries: int = option(64, "Training queries (train split) used per epoch.", min=1)
    test_queries: int = option(32, "Test queries of the per-epoch evaluation.", min=1)


@dataclass(frozen=True)
class VllmConfig(ConfigBase):
    """vLLM engines (backend = 'vllm') sharing one GPU with training (llmauction_sim/lm/memory.py)."""
    gpu_memory_utilization: float = option(
        0.0, "Share of the GPU's memory each vLLM engine may take (weights + KV cache); 0 = "
        "planned: what the DPO trainer on the same GPU, the HF policy and per-process headroom "
        "leave, split between the engines (vLLM's own default, 0.9, leaves nothing for "
        "training).", min=0.0, max=1.0)
    max_model_len: int = option(
        0, "Longest prompt + answer an engine serves (sizes its KV cache); 0 = dpo.max_length, "
        "which IRPO's length check already makes cover every prompt plus max_new_tokens.", min=0)
    gpu_memory_gib: float = option(
        0.0, "GPU memory to plan for, GiB; 0 = the device's own total, read when an engine "
        "starts.", min=0.0)
    headroom_gib: float = option(
        2.0, "Memory kept free per process on the GPU (CUDA context, allocator "
        "fragmentation, vLLM's CUDA graphs), GiB.", min=0.0)
    colocate_training: bool = option(
        True, "Plan for DPO on the same GPU as the engines (IRPO on one GPU; with dpo.launcher, "
        "rank 0's share); false when the engines have the GPU to themselves (evaluate).")


@dataclass(frozen=True)
class ValueConfig(ConfigBase):
    """Advertisers' values per click on a classic auction."""
    distribution: str = option("uniform", "Distribution of values per click.",
                               choices=["uniform", "lognormal", "constant"])
    low: float = option(0.0, "uniform: lower end of the values per click.", min=0.0)
    high: float = option(1.0, "uniform: upper end; constant: the value of every advertiser.",
                         min=0.0, exclusive_min=True)
    log_mean: float = option(0.0, "lognormal: mean of log(value).")
    log_sigma: float = option(0.5, "lognormal: standard deviation of log(value).", min=0.0)
    redraw: str = option("per_auction", "per_auction: every advertiser draws a fresh value in every "
                         "auction (i.i.d., the textbook symmetric setting); once: each advertiser "
                         "draws one value per click for the whole run.",
                         choices=["per_auction", "once"])

    def validate(self) -> None:
        if self.distribution == "uniform" and self.low >= self.high:
            raise ConfigError(f"low = {self.low} must be below high = {self.high}")


@dataclass(frozen=True)
class ClassicConfig(ConfigBase):
    """Learning bidders on a classic auction (`llmauction equilibrium --mechanism first_price`;
    docs/bidding.md)."""
    mechanism: str = option("first_price", "Classic auction: first_price, second_price or gsp "
                            "(any name in the classic-auction registry).")
    advertisers: str = option("vm:4,um:4", "Population: type:count[:key=value...] entries, "
                              "comma separated (types truthful, fixed_shading, fixed_bid, vm, "
                              "um).")
    rounds: int = option(300, "Learning rounds.", min=1)
    auctions_per_round: int = option(1000, "Auctions per round, run at once.", min=1)
    slot_weights: list[float] = option([1.0], "Position weights of the slots (first = top slot).")
    reserve: float = option(0.0, "Reserve price per click.", min=0.0)
    ctr_low: float = option(1.0, "Click-through rates are uniform in [ctr_low, ctr_high] per "
                            "(auction, advertiser); 1 and 1 = every allocated slot is clicked.",
                            min=0.0, exclusive_min=True)
    ctr_high: float = option(1.0, "Upper end of the click-through rates.", min=0.0,
                             exclusive_min=True)
    grid_points: int = option(51, "Shading factors on the learners' and regret grid.", min=2)
    grid_max: float = option(1.0, "Largest shading factor on the grid (raise it above 1/tau for "
                             "value maximizers with tau < 1).", min=0.0, exclusive_min=True)
    values: ValueConfig = section(ValueConfig, "Values per click.")

    def validate(self) -> None:
        if self.ctr_low > self.ctr_high:
            raise ConfigError(f"ctr_low = {self.ctr_low} must be <= ctr_high = {self.ctr_high}")


@dataclass(frozen=True)
class RunConfig(ConfigBase):
    seed: int = option(0, "The one seed every random draw derives from.", min=0)
    ad_llm: ModelConfig = section(ModelConfig, "The Ad-LLM (allocation rule).")
    ad_sampling: SamplingConfig = section(SamplingConfig, "Ad-LLM sampling (paper: T=0.7, "
                                          "top-p 0.8, top-k 20).")
    user_llm: ModelConfig = section(ModelConfig, "The User-LLM (query writer, click judge).")
    user_sampling: SamplingConfig = section(
        lambda: SamplingConfig(temperature=0.3, top_p=0.8, top_k=20, max_new_tokens=64),
        "User-LLM sampling (paper: T=0.3, top-p 0.8, top-k 20).")
    ad_prompt: AdPromptConfig = section(AdPromptConfig, "The Ad-LLM's prompt.")
    retrieval: RetrievalConfig = section(RetrievalConfig, "Candidate retrieval before the prompt.")
    penalty: PenaltyConfig = section(PenaltyConfig, "Format penalty s_resp(y).")
    data: DataConfig = section(DataConfig, "Synthetic users and their queries.")
    clicks: ClickConfig = section(ClickConfig, "The User-LLM's click decisions.")
    market: MarketConfig = section(MarketConfig, "The stepped market.")
    mechanisms: MechanismConfig = section(MechanismConfig, "The mechanisms' settings.")
    bid_policies: BidPolicyConfig = section(BidPolicyConfig, "The bid policies' settings.")
    pctr: PctrConfig = section(PctrConfig, "The pCTR reward model of IRPO.")
    dpo: DpoConfig = section(DpoConfig, "One DPO phase of IRPO.")
    irpo: IrpoConfig = section(IrpoConfig, "The IRPO training loop.")
    warmstart: WarmStartConfig = section(WarmStartConfig, "Format warm start before IRPO.")
    vllm: VllmConfig = section(VllmConfig, "vLLM engines' memory (backend = 'vllm').")
    classic: ClassicConfig = section(ClassicConfig, "Learning bidders on a classic auction.")

    @classmethod
    def current_path(cls, path: str) -> str:
        if path.split(".", 1)[0] in CLASSIC_FIELDS:
            return f"classic.{path}"  # a classic run's fields may omit the section's name
        new = RENAMED.get(path)
        if new is None:
            return path
        warnings.warn(f"config field '{path}' is now '{new}'; the old name still works but will "
                      "be removed", FutureWarning, stacklevel=4)
        return new

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = ""):
        if not where and isinstance(data, Mapping):
            data = _migrate(data)
        return super().from_dict(data, where)

    def validate(self) -> None:
        k = self.retrieval.num_candidates
        try:
            size = len(load_catalog(self.data.catalog))
        except CatalogError as exc:
            raise ConfigError(f"data.catalog = {self.data.catalog!r}: {exc}") from None
        if isinstance(k, int):
            if k > size:
                raise ConfigError(f"retrieval.num_candidates = {k} is larger than the catalog "
                                  f"({size} ads); use at most {size} or 'all'")


# Fields that moved into their mechanism's or judge's own table: old dotted name -> new. Config
# files and run folders (config.json) written before still load, as do --set overrides.
RENAMED = {
    "mechanisms.slots": "mechanisms.pregen_gsp.slots",
    "mechanisms.slot_weights": "mechanisms.pregen_gsp.slot_weights",
    "mechanisms.gsp_payment": "mechanisms.pregen_gsp.payment",
    "mechanisms.mosaic_samples": "mechanisms.mosaic.samples",
    "mechanisms.mosaic_tau": "mechanisms.mosaic.tau",
    "mechanisms.mosaic_lambda": "mechanisms.mosaic.penalty_weight",
    "mechanisms.mosaic_correction": "mechanisms.mosaic.correction",
    "mechanisms.mosaic_payment": "mechanisms.mosaic.payment",
    "mechanisms.llm_auction_checkpoint": "mechanisms.llm_auction.checkpoint",
    "mechanisms.llm_auction_adapter": "mechanisms.llm_auction.adapter",
    "mechanisms.tilted_temperature": "mechanisms.llm_auction_tilted.temperature",
    "mechanisms.tilted_max_ads": "mechanisms.llm_auction_tilted.max_ads",
    "mechanisms.tilted_lambda": "mechanisms.llm_auction_tilted.penalty_weight",
    "clicks.max_new_tokens": "clicks.llm.max_new_tokens",
    **{f"clicks.{name}": f"clicks.embedding.{name}" for name in (
        "bias", "relevance_weight", "profile_weight", "nativeness_weight", "fatigue",
        "duplicate_similarity")},
}


# The fields of the classic equilibrium's own config before it became the `classic` section: a
# file's [equilibrium] table or top-level fields, and old run folders' config.json.
CLASSIC_FIELDS = [f.name for f in dataclasses.fields(ClassicConfig)]


def _migrate(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with the fields of RENAMED moved to their new places (a new name given too wins),
    and a classic equilibrium config (the [equilibrium] table, or its fields at the top level)
    moved into the `classic` section."""
    data = copy.deepcopy(dict(data))
    old = data.pop("equilibrium", None)
    old = dict(old) if isinstance(old, Mapping) else {}
    old.update({k: data.pop(k) for k in CLASSIC_FIELDS if k in data})
    if old:
        if "seed" in old:
            data.setdefault("seed", old.pop("seed"))
        classic = data.setdefault("classic", {})
        if isinstance(classic, dict):
            for key, value in old.items():
                classic.setdefault(key, value)
    for old, new in RENAMED.items():
        section, name = old.split(".")
        table = data.get(section)
        if not isinstance(table, dict) or name not in table:
            continue
        value = table.pop(name)
        *parents, leaf = new.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, value)
    return data
