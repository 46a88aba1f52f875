import dataclasses
from pathlib import Path

import pytest
import tomli_w

from llmauction_sim.config import (
    ConfigBase,
    ConfigError,
    DataConfig,
    ModelConfig,
    RetrievalConfig,
    RunConfig,
    SamplingConfig,
    field_docs,
    option,
)


def _drop_none(data: dict) -> dict:
    """TOML has no null: leave optional fields that are None out of the file."""
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in data.items()
            if v is not None}


def _write_toml(tmp_path: Path, data: dict, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(_drop_none(data)), encoding="utf-8")
    return path


def _lookup(config: ConfigBase, dotted: str):
    value = config
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


# --- defaults --------------------------------------------------------------------------------

def test_defaults_construct() -> None:
    config = RunConfig()
    assert config.seed == 0
    assert isinstance(config.ad_llm, ModelConfig)
    assert config.ad_sampling == SamplingConfig()
    assert (config.ad_sampling.temperature, config.ad_sampling.top_p,
            config.ad_sampling.top_k) == (0.7, 0.8, 20)
    # The User-LLM section has its own defaults.
    assert (config.user_sampling.temperature, config.user_sampling.max_new_tokens) == (0.3, 64)
    assert config.retrieval.num_candidates == 4
    assert config.market.mechanism == "llm_auction_tilted"
    assert config.mechanisms.policy_adapter == "smollm2-135m-warmstart"
    assert config.data.query_writer == "llm"
    assert RunConfig.from_dict({}) == config


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().seed = 3  # type: ignore[misc]


# --- TOML ------------------------------------------------------------------------------------

def test_toml_round_trip(tmp_path: Path) -> None:
    config = RunConfig().with_overrides([
        "seed=7", "ad_sampling.temperature=0.5", "ad_sampling.top_k=0", "user_llm.adapter=/tmp/a",
        "retrieval.num_candidates=all", "penalty.duplicate=3.5", "data.profiles=12",
        "data.query_writer=template",
    ])
    path = _write_toml(tmp_path, config.to_dict())
    loaded = RunConfig.load(path)
    assert loaded == config
    assert loaded.retrieval.num_candidates == "all"
    assert loaded.user_llm.adapter == "/tmp/a"
    assert loaded.ad_llm.adapter is None


def test_toml_load_partial_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("seed = 3\n[ad_sampling]\ntemperature = 0\ntop_k = 5.0\n"
                    "[retrieval]\nnum_candidates = 10\n", encoding="utf-8")
    config = RunConfig.load(path, overrides=["data.profiles=9"])
    assert config.seed == 3
    assert config.ad_sampling.temperature == 0.0
    assert isinstance(config.ad_sampling.temperature, float)
    assert config.ad_sampling.top_k == 5 and isinstance(config.ad_sampling.top_k, int)
    assert config.ad_sampling.top_p == 0.8  # untouched field keeps its default
    assert config.retrieval.num_candidates == 10
    assert config.data.profiles == 9
    assert config.penalty == RunConfig().penalty


def test_toml_partial_user_sampling_keeps_section_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[user_sampling]\ntop_k = 5\n", encoding="utf-8")
    config = RunConfig.load(path)
    assert config.user_sampling.top_k == 5
    assert config.user_sampling.temperature == RunConfig().user_sampling.temperature == 0.3
    assert config.user_sampling.max_new_tokens == 64


def test_missing_config_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)


def test_config_path_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path)


def test_invalid_toml_names_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("seed = = 3\n[ad_sampling\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)


# --- unknown keys ----------------------------------------------------------------------------

def test_unknown_top_level_key_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("sede = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'sede'.*[Dd]id you mean 'seed'"):
        RunConfig.load(path)


def test_unknown_section_key_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[ad_sampling]\ntemprature = 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'ad_sampling\.temprature'.*[Dd]id you mean "
                                          r"'temperature'"):
        RunConfig.load(path)


def test_unknown_section_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'ad_sampler'.*[Dd]id you mean 'ad_sampling'"):
        RunConfig.from_dict({"ad_sampler": {"temperature": 0.1}})


@pytest.mark.parametrize("override, name, close", [
    ("sed=1", "sed", "seed"),
    ("ad_sampling.temprature=1", "ad_sampling.temprature", "temperature"),
    ("retrieval.num_candidate=3", "retrieval.num_candidate", "num_candidates"),
])
def test_unknown_override_key_suggests_close_match(override: str, name: str, close: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig().with_overrides([override])
    message = str(info.value)
    assert f"'{name}'" in message
    assert f"did you mean '{close}'" in message.lower()


def test_unknown_key_without_close_match_lists_known_fields() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig().with_overrides(["data.zzzzzz=1"])
    message = str(info.value)
    assert "'data.zzzzzz'" in message
    assert "did you mean" not in message.lower()
    assert "profiles" in message and "query_writer" in message


# --- bad values ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, field_name", [
    ("data.profiles=-1", "data.profiles"),
    ("data.queries_per_profile=0", "data.queries_per_profile"),
    ("penalty.free_ads=-2", "penalty.free_ads"),
    ("ad_llm.max_batch_size=0", "ad_llm.max_batch_size"),
    ("seed=-1", "seed"),
    ("ad_sampling.temperature=-0.1", "ad_sampling.temperature"),
    ("ad_sampling.top_p=0", "ad_sampling.top_p"),
    ("ad_sampling.top_p=1.5", "ad_sampling.top_p"),
    ("user_sampling.top_k=-1", "user_sampling.top_k"),
    ("user_sampling.max_new_tokens=0", "user_sampling.max_new_tokens"),
    ("data.test_fraction=1.1", "data.test_fraction"),
    ("retrieval.profile_weight=-0.5", "retrieval.profile_weight"),
    ("retrieval.num_candidates=101", "retrieval.num_candidates"),
    ("retrieval.num_candidates=0", "retrieval.num_candidates"),
    ("retrieval.num_candidates=-3", "retrieval.num_candidates"),
    ("retrieval.num_candidates=some", "retrieval.num_candidates"),
    ("data.profiles=abc", "data.profiles"),
    ("data.profiles=2.5", "data.profiles"),
    ("ad_sampling.temperature=warm", "ad_sampling.temperature"),
    ("data.query_writer=bogus", "data.query_writer"),
    ("ad_llm.dtype=float8", "ad_llm.dtype"),
    ("ad_llm.backend=sglang", "ad_llm.backend"),
])
def test_bad_value_names_field(override: str, field_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig().with_overrides([override])
    assert field_name in str(info.value)


def test_num_candidates_larger_than_catalog_says_how_many() -> None:
    with pytest.raises(ConfigError, match=r"100 ads.*'all'"):
        RunConfig().with_overrides(["retrieval.num_candidates=101"])
    assert RunConfig().with_overrides(["retrieval.num_candidates=100"]) \
        .retrieval.num_candidates == 100


def test_num_candidates_all_accepted() -> None:
    config = RunConfig().with_overrides(["retrieval.num_candidates=all"])
    assert config.retrieval.num_candidates == "all"
    assert RetrievalConfig(num_candidates="all").num_candidates == "all"


def test_choices_listed_in_error() -> None:
    with pytest.raises(ConfigError, match=r"\['llm', 'template'\]"):
        RunConfig().with_overrides(["data.query_writer=bogus"])


def test_bad_value_in_toml_names_field(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[data]\nprofiles = \"many\"\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.profiles"):
        RunConfig.load(path)
    path.write_text("[ad_sampling]\ntop_k = true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ad_sampling\.top_k"):
        RunConfig.load(path)


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ConfigError, match="profiles"):
        DataConfig(profiles=0)
    with pytest.raises(ConfigError, match="num_candidates"):
        RetrievalConfig(num_candidates=0)


def test_section_given_a_scalar_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("ad_llm = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ad_llm.*table"):
        RunConfig.load(path)


@pytest.mark.parametrize("override", ["ad_sampling.temperature=nan", "ad_sampling.top_p=nan"])
def test_nan_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        RunConfig().with_overrides([override])


def test_missing_catalog_path_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.catalog"):
        RunConfig().with_overrides([f"data.catalog={tmp_path / 'none.json'}"])


# --- overrides -------------------------------------------------------------------------------

def test_overrides_coerce_types() -> None:
    config = RunConfig().with_overrides([
        "seed=42", "ad_sampling.temperature=1", "ad_sampling.top_p=0.25", " data.profiles = 7 ",
        "ad_llm.adapter=/some/folder", "retrieval.num_candidates=12",
    ])
    assert config.seed == 42 and isinstance(config.seed, int)
    assert config.ad_sampling.temperature == 1.0
    assert isinstance(config.ad_sampling.temperature, float)
    assert config.ad_sampling.top_p == 0.25
    assert config.data.profiles == 7 and isinstance(config.data.profiles, int)
    assert config.ad_llm.adapter == "/some/folder"
    assert config.retrieval.num_candidates == 12
    assert isinstance(config.retrieval.num_candidates, int)
    # Other fields and the original are untouched.
    assert config.user_sampling == RunConfig().user_sampling
    assert RunConfig().seed == 0


@pytest.mark.parametrize("raw", ["none", "None", "null"])
def test_overrides_none_for_optional(raw: str) -> None:
    config = RunConfig().with_overrides(["ad_llm.adapter=/x"]).with_overrides(
        [f"ad_llm.adapter={raw}", f"data.catalog={raw}"])
    assert config.ad_llm.adapter is None
    assert config.data.catalog is None


def test_override_value_may_contain_equals() -> None:
    config = RunConfig().with_overrides(["ad_llm.adapter=a=b"])
    assert config.ad_llm.adapter == "a=b"


def test_later_override_wins() -> None:
    config = RunConfig().with_overrides(["seed=1", "seed=2"])
    assert config.seed == 2


@dataclasses.dataclass(frozen=True)
class _Flags(ConfigBase):
    verbose: bool = option(False, "Print more.")
    ratio: float = option(1.0, "A ratio.", min=0.0)
    limit: int | None = option(None, "Optional limit.", min=1)
    tags: list[str] = option(["a"], "Some tags.")


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False),
])
def test_overrides_coerce_bool(raw: str, expected: bool) -> None:
    assert _Flags().with_overrides([f"verbose={raw}"]).verbose is expected


def test_bad_bool_and_optional_int() -> None:
    with pytest.raises(ConfigError, match="verbose"):
        _Flags().with_overrides(["verbose=maybe"])
    assert _Flags().with_overrides(["limit=5"]).limit == 5
    assert _Flags().with_overrides(["limit=5", "limit=none"]).limit is None
    with pytest.raises(ConfigError, match="limit"):
        _Flags().with_overrides(["limit=0"])
    with pytest.raises(ConfigError, match="limit"):
        _Flags().with_overrides(["limit=lots"])


def test_overrides_coerce_list() -> None:
    assert _Flags().with_overrides(["tags=x, y,z"]).tags == ["x", "y", "z"]
    assert _Flags().tags == ["a"]


def test_setting_a_section_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"'ad_llm' is a section.*ad_llm\.\w+="):
        RunConfig().with_overrides(["ad_llm=3"])


def test_field_used_as_section_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"'seed' is a field, not a section"):
        RunConfig().with_overrides(["seed.value=3"])


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        RunConfig().with_overrides(["ad_sampling.temperature"])


def test_replace_validates() -> None:
    assert RunConfig().replace(seed=5).seed == 5
    with pytest.raises(ConfigError, match="seed"):
        RunConfig().replace(seed=-5)


# --- help texts ------------------------------------------------------------------------------

def test_field_docs_cover_every_field() -> None:
    rows = field_docs(RunConfig)
    names = [row[0] for row in rows]
    assert len(names) == len(set(names))

    def leaves(value, prefix=""):  # every field, nested sections flattened, plugin tables not
        out = []
        for f in dataclasses.fields(value):
            inner = getattr(value, f.name)
            if dataclasses.is_dataclass(inner):
                out += leaves(inner, f"{prefix}{f.name}.")
            elif not f.metadata.get("plugins"):
                out.append(prefix + f.name)
        return out

    assert names == leaves(RunConfig())
    for name, type_name, _default, help_text in rows:
        assert isinstance(help_text, str) and help_text.strip(), name
        assert isinstance(type_name, str) and type_name, name
    assert "ad_sampling.temperature" in names and "data.query_writer" in names


def test_section_fields_have_help() -> None:
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help", "").strip(), f.name


def test_field_docs_defaults_match_real_defaults() -> None:
    config = RunConfig()
    for name, _type, default, _help in field_docs(RunConfig):
        assert default == _lookup(config, name), name


# --- each entry's own section; renamed fields -----------------------------------------------------

def test_each_builtin_mechanism_and_judge_has_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[mechanisms.mosaic]\nsamples = 5\n[mechanisms.llm_auction_tilted]\n'
                    'temperature = 2.5\n[clicks.embedding]\nbias = -5.0\n')
    config = RunConfig.load(path, ["mechanisms.pregen_gsp.payment=vcg"])
    assert config.mechanisms.mosaic.samples == 5
    assert config.mechanisms.llm_auction_tilted.temperature == 2.5
    assert config.clicks.embedding.bias == -5.0 and config.clicks.llm.max_new_tokens == 96
    assert config.mechanisms.pregen_gsp.payment == "vcg"
    with pytest.raises(ConfigError, match="mechanisms.mosaic.samples = 0 is out of range"):
        config.with_overrides(["mechanisms.mosaic.samples=0"])


def test_plugin_tables_round_trip_and_keep_raw_values() -> None:
    config = RunConfig().with_overrides(["mechanisms.my_mech.slots=2",
                                         "bid_policies.pacer.target=1.5", "clicks.mine.base=0.5"])
    assert config.mechanisms.plugins == {"my_mech": {"slots": "2"}}
    assert config.bid_policies.plugins == {"pacer": {"target": "1.5"}}
    data = config.to_dict()
    assert data["mechanisms"]["my_mech"] == {"slots": "2"} and "plugins" not in data["mechanisms"]
    assert RunConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown config field 'mechanisms.slots_'"):
        RunConfig().with_overrides(["mechanisms.slots_=2"])


def test_renamed_fields_still_load_and_overrides_warn() -> None:
    old = {"mechanisms": {"mosaic_samples": 3, "tilted_temperature": 2.0, "gsp_payment": "vcg",
                          "llm_auction_adapter": "a"},
           "clicks": {"bias": -4.0, "max_new_tokens": 12}}
    config = RunConfig.from_dict(old)  # an old run folder's config.json
    assert (config.mechanisms.mosaic.samples, config.mechanisms.llm_auction_tilted.temperature,
            config.mechanisms.pregen_gsp.payment, config.mechanisms.llm_auction.adapter) == \
        (3, 2.0, "vcg", "a")
    assert (config.clicks.embedding.bias, config.clicks.llm.max_new_tokens) == (-4.0, 12)
    with pytest.warns(FutureWarning, match="'mechanisms.mosaic_tau' is now 'mechanisms.mosaic.tau'"):
        assert RunConfig().with_overrides(["mechanisms.mosaic_tau=4"]).mechanisms.mosaic.tau == 4


def test_the_classic_equilibrium_is_a_section_of_the_one_config(tmp_path: Path) -> None:
    config = RunConfig().with_overrides(["classic.rounds=30", "values.high=2", "seed=4"])
    assert config.classic.rounds == 30 and config.classic.values.high == 2.0
    # The classic equilibrium's own config before: a file's [equilibrium] table, or its fields at
    # the top level (sweep files, old run folders' config.json).
    for data in ({"equilibrium": {"mechanism": "gsp", "rounds": 7, "seed": 2}},
                 {"mechanism": "gsp", "rounds": 7, "seed": 2, "values": {"high": 3.0}}):
        old = RunConfig.from_dict(data)
        assert (old.seed, old.classic.mechanism, old.classic.rounds) == (2, "gsp", 7)
    with pytest.raises(ConfigError, match="classic.ctr_low"):
        RunConfig().with_overrides(["classic.ctr_low=2"])
