"""The `llmauction` command line: help texts, config commands, clear errors, a template build."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest

from llmauction_sim.cli import main
from llmauction_sim.config import RunConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, expected", [
    ([], ["data", "answer", "simulate", "demo", "irpo", "sweep", "config", "models",
          "--verbose"]),
    (["data"], ["build"]),
    (["data", "build"], ["--out", "--profiles", "--queries-per-profile", "--writer", "--quiet",
                         "--config", "--set", "--seed", "OUT/.parts", "no --resume", "hours"]),
    (["answer"], ["--data", "--split", "--num-queries", "--num-candidates", "--quiet", "--config",
                  "--set", "--seed"]),
    (["simulate"], ["--out", "--steps", "--queries-per-step", "--mechanism", "--judge", "--data",
                    "--resume", "--show-answers", "--quiet", "--config", "--set", "--seed"]),
    (["demo"], ["--out", "--steps", "--queries-per-step", "--mechanism", "--judge", "--config",
                "--set", "--seed"]),
    (["irpo"], ["--out", "--epochs", "--train-queries", "--test-queries", "--data", "--resume",
                "--config", "--set", "--seed"]),
    (["sweep"], ["--out", "--executor", "docs/scaling.md", "experiments/sweep.toml"]),
    (["config"], ["show", "docs"]),
    (["config", "show"], ["--config", "--set", "--seed"]),
    (["config", "docs"], ["usage:"]),
    (["models"], ["--prepare"]),
    (["viz"], ["--host", "--port", "--data", "--config", "--set", "--seed"]),
    (["equilibrium"], ["--mechanism", "--advertisers", "--rounds", "--auctions-per-round",
                       "--out", "--config", "--set", "--seed"]),
    (["evaluate"], ["--mechanism", "--test-queries", "--data", "--out", "--config", "--set",
                    "--seed"]),
    (["bid-sweep"], ["--mechanism", "--mode", "--test-queries", "--repeats", "--bids", "--data",
                     "--out", "--config", "--set", "--seed"]),
])
def test_every_command_has_help(capsys, argv: list[str], expected: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmauction")
    for word in expected:
        assert word in " ".join(out.split()), word  # help text is wrapped


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_market_help_lists_the_registered_mechanisms(capsys, command) -> None:
    from llmauction_sim.mechanisms import mechanism_names, register_mechanism
    from llmauction_sim.mechanisms.base import MECHANISMS

    register_mechanism("help_probe", lambda config, **resources: None)
    try:
        with pytest.raises(SystemExit):
            main([command, "--help"])
    finally:
        MECHANISMS.unregister("help_probe")
    out = " ".join(capsys.readouterr().out.split())
    assert "registered mechanisms (--mechanism): " + ", ".join(
        sorted([*mechanism_names(), "help_probe"])) in out


def test_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"llmauction {version('llmauction-sim')}"


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_config_show_round_trips(capsys) -> None:
    code, out, err = run(capsys, ["config", "show"])
    assert code == 0 and err == ""
    assert RunConfig.from_dict(tomllib.loads(out)) == RunConfig()


def test_config_show_with_overrides(capsys) -> None:
    code, out, _ = run(capsys, ["config", "show", "--set", "retrieval.num_candidates=all",
                                "--set", "ad_sampling.top_k=50", "--seed", "7"])
    assert code == 0
    data = tomllib.loads(out)
    assert data["retrieval"]["num_candidates"] == "all"
    assert data["ad_sampling"]["top_k"] == 50 and data["seed"] == 7
    expected = RunConfig().with_overrides(["retrieval.num_candidates=all",
                                           "ad_sampling.top_k=50", "seed=7"])
    assert RunConfig.from_dict(data) == expected


def test_config_show_reads_a_file(capsys, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("seed = 3\n[user_sampling]\ntop_k = 5\n")
    code, out, _ = run(capsys, ["config", "show", "--config", str(path),
                                "--set", "user_sampling.top_p=0.5"])
    assert code == 0
    config = RunConfig.from_dict(tomllib.loads(out))
    assert (config.seed, config.user_sampling.top_k, config.user_sampling.top_p) == (3, 5, 0.5)
    assert config.user_sampling.temperature == 0.3  # the section's own default is kept


@pytest.mark.parametrize("argv, needles", [
    (["data", "build", "--out", "{tmp}/x", "--profiles", "-1"], ["data.profiles", ">= 1"]),
    (["data", "build", "--out", "{tmp}/x", "--queries-per-profile", "0"],
     ["data.queries_per_profile"]),
    (["config", "show", "--set", "ad_sampling.temprature=1"],
     ["ad_sampling.temprature", "Did you mean 'temperature'"]),
    (["config", "show", "--set", "retrieval.num_candidates=500"],
     ["retrieval.num_candidates", "100"]),
    (["config", "show", "--set", "retrieval.num_candidates=many"], ["num_candidates", "'all'"]),
    (["config", "show", "--set", "ad_sampling.top_p=0"], ["top_p"]),
    (["config", "show", "--config", "{tmp}/missing.toml"], ["missing.toml", "config show"]),
    (["answer", "--data", "{tmp}", "--set", "seed=-2"], ["seed"]),
    (["equilibrium", "--mechanism", "dutch", "--out", "{tmp}/x"],
     ["'dutch'", "first_price", "llm_auction"]),
    (["equilibrium", "--mechanism", "pretrained", "--auctions-per-round", "9", "--out",
      "{tmp}/x"], ["market.queries_per_step"]),
    (["equilibrium", "--mechanism", "gsp", "--checkpoint", "{tmp}", "--out", "{tmp}/x"],
     ["--checkpoint", "llm_auction"]),
    (["evaluate", "--mechanism", "llm_auction", "--checkpoint", "{tmp}/nothing", "--out",
      "{tmp}/x"], ["--checkpoint", "IRPO run folder"]),
    (["config", "show", "--set", "dpo.launcher=zero9"], ["dpo.launcher", "zero3"]),
])
def test_bad_input_exit_code_2_names_the_field(capsys, tmp_path: Path, argv: list[str],
                                               needles: list[str]) -> None:
    code, out, err = run(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert out == ""
    assert err.startswith("llmauction: ")
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "x").exists()  # nothing written before the config is valid


def test_answer_on_empty_folder(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, ["answer", "--data", str(tmp_path)])
    assert code == 2
    assert "not a data folder" in err and "profiles.parquet" in err
    assert f"llmauction data build --out {tmp_path}" in err


def test_answer_split_without_queries(capsys, tmp_path: Path) -> None:
    assert run(capsys, ["data", "build", "--writer", "template", "--profiles", "3",
                        "--queries-per-profile", "1", "--out", str(tmp_path), "--quiet",
                        "--set", "data.test_fraction=0"])[0] == 0
    code, _, err = run(capsys, ["answer", "--data", str(tmp_path), "--split", "test"])
    assert code == 2
    assert "no 'test' queries" in err and "--split all" in err


def test_answer_negative_num_queries_names_the_option(capsys, tmp_path: Path) -> None:
    assert run(capsys, ["data", "build", "--writer", "template", "--profiles", "2",
                        "--queries-per-profile", "1", "--out", str(tmp_path), "--quiet"])[0] == 0
    code, _, err = run(capsys, ["answer", "--data", str(tmp_path), "--split", "all",
                                "--num-queries", "-1"])
    assert code == 2
    assert "--num-queries" in err


def test_config_docs_matches_committed_reference(capsys) -> None:
    if not DOCS.is_file():
        pytest.skip("docs/config.md is not in this checkout")
    code, out, _ = run(capsys, ["config", "docs"])
    assert code == 0
    assert out == DOCS.read_text(), ("docs/config.md is out of date; regenerate it with "
                                     "`llmauction config docs > docs/config.md`")


def test_config_docs_lists_every_field(capsys) -> None:
    from llmauction_sim.config import field_docs

    _, out, _ = run(capsys, ["config", "docs"])
    for name, *_ in field_docs(RunConfig):
        assert f"| `{name}` |" in out


def test_template_build(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "data"
    argv = ["data", "build", "--writer", "template", "--profiles", "5",
            "--queries-per-profile", "2", "--out", str(out_dir), "--quiet"]
    code, out, err = run(capsys, argv)
    assert code == 0
    assert f"wrote {out_dir}: 5 profiles, 10 queries" in out
    assert "writing queries" not in err  # --quiet: no progress bar
    profiles = pd.read_parquet(out_dir / "profiles.parquet")
    queries = pd.read_parquet(out_dir / "queries.parquet")
    assert len(profiles) == 5 and len(queries) == 10
    assert (out_dir / "manifest.json").is_file()
    code, out, _ = run(capsys, argv)
    assert code == 0 and out.startswith(f"reused existing build in {out_dir}")


def test_models_lists_embedded(capsys) -> None:
    code, out, _ = run(capsys, ["models"])
    assert code == 0
    assert out.startswith("smollm2-135m-instruct\t")


def test_models_prepare_unknown_name(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, ["models", "--prepare", str(tmp_path / "nope")])
    assert code == 2
    assert "was not found" in err and "Fix:" in err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps = 0 must be >= 1"),
    (["--queries-per-step", "-2"], "--queries-per-step = -2 must be >= 1"),
    (["--mechanism", "pretrianed"], "did you mean 'pretrained'"),
    (["--judge", "embeding"], "is not a click judge"),
    (["--resume"], "no run to resume"),
    (["--set", "market.bid_low=500"], "bid_low = 500 is above bid_high"),
])
def test_simulate_bad_input(capsys, tmp_path, argv, message) -> None:
    code, _, err = run(capsys, ["simulate", "--out", str(tmp_path / "run"), "--quiet", *argv])
    assert code == 2
    assert message in err


def test_irpo_bad_input(capsys, tmp_path) -> None:
    code, _, err = run(capsys, ["irpo", "--out", str(tmp_path / "r"), "--epochs", "0"])
    assert code == 2 and "--epochs = 0 must be >= 1" in err


def test_answer_shows_progress_and_quiet_silences_it_and_the_model_bars(capsys, tmp_path) -> None:
    """`answer` says when its batched generation starts and ends; --quiet silences that and
    transformers' own "Loading weights" bar, and leaves transformers' bars as they were."""
    from tiny_models import embedded_tokenizer, tiny_llama
    from transformers.utils import logging as hf_logging

    data = tmp_path / "data"
    assert run(capsys, ["data", "build", "--writer", "template", "--profiles", "3",
                        "--queries-per-profile", "1", "--out", str(data), "--quiet"])[0] == 0
    bars_on = hf_logging.is_progress_bar_enabled()
    for quiet in (False, True):
        model = tmp_path / f"model-{quiet}"  # a folder of its own: loaded, not reused
        tiny_llama().save_pretrained(model)
        embedded_tokenizer().save_pretrained(model)
        capsys.readouterr()  # saving's own bar
        code, out, err = run(capsys, ["answer", "--data", str(data), "--split", "all",
                                      "--num-queries", "2", "--set", f"ad_llm.name={model}",
                                      "--set", "ad_sampling.max_new_tokens=4",
                                      *(["--quiet"] if quiet else [])])
        assert code == 0 and "2 answers in" in out
        if quiet:
            assert err == ""
        else:
            assert "answering 2 queries" in err and "answered 2 queries in" in err
            assert ("Loading weights" in err) == bars_on
    assert hf_logging.is_progress_bar_enabled() == bars_on
