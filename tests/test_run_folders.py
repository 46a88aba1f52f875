"""Run folders that cannot be corrupted: kinds and inputs, fingerprints, locks, per-process temp
files, keyed sweeps that end their workers, failed starts, resumes that never shrink, and one-line
errors checked before any model work.

The market runs on test_market.py's scripted mechanism and judge, so no language model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from test_market import ScriptedJudge, ScriptedMechanism, config, run_tables, write_small_data

from llmauction_sim.cli import main
from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.market import RunFolderError, simulate
from llmauction_sim.runfolder import acquire, clean_temps, open_run_folder
from llmauction_sim.sweep import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def resources(packaged_catalog, text_encoder):
    def make(cfg):
        return {"catalog": packaged_catalog, "encoder": text_encoder,
                "mechanism": ScriptedMechanism(packaged_catalog, cfg.penalty),
                "judge": ScriptedJudge()}
    return make


@pytest.fixture
def data(tmp_path, packaged_catalog):
    write_small_data(tmp_path / "data", packaged_catalog)
    return tmp_path / "data"


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must fail with exit code 2 and one line on stderr holding `needles`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------------
# Every folder says what it is; no command writes into another kind's folder or its own input


def test_a_run_folder_records_kind_command_config_and_input_hashes(tmp_path, data, resources):
    cfg = config(data=str(data))
    simulate(cfg, tmp_path / "run", progress=False, **resources(cfg))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["kind"] == "simulate" and record["state"] == "finished"
    assert len(record["config_hash"]) == 16 and len(record["commands"]) == 1
    files = record["inputs"]["data"]["files"]
    assert set(files) == {"profiles.parquet", "queries.parquet"}
    assert all(len(h) == 64 for h in files.values())


@pytest.mark.parametrize("command", [
    ["evaluate", "--mechanism", "pretrained"],
    ["simulate"],
    ["bid-sweep", "--mechanism", "pretrained", "--mode", "monotonicity"],
    ["irpo"],
])
def test_no_command_writes_into_its_own_input(capsys, data, command) -> None:
    before = (data / "queries.parquet").read_bytes()
    one_line_error(capsys, [*command, "--out", str(data), "--data", str(data)],
                   "both the output folder and", "give another --out")
    assert (data / "queries.parquet").read_bytes() == before


def test_no_command_writes_into_a_folder_of_another_kind(capsys, tmp_path, data,
                                                         resources) -> None:
    cfg = config(data=str(data))
    simulate(cfg, tmp_path / "run", progress=False, **resources(cfg))
    before = (tmp_path / "run" / "queries.parquet").read_bytes()
    one_line_error(capsys, ["data", "build", "--out", str(tmp_path / "run"), "--writer",
                            "template", "--profiles", "4"], "holds a simulate run")
    one_line_error(capsys, ["evaluate", "--mechanism", "pretrained", "--out",
                            str(tmp_path / "run"), "--data", str(data)], "holds a simulate run")
    one_line_error(capsys, ["simulate", "--out", str(data)], "holds a data run")
    assert (tmp_path / "run" / "queries.parquet").read_bytes() == before
    # Folders written before run.json are recognised by their files.
    (tmp_path / "old-irpo").mkdir()
    (tmp_path / "old-irpo" / "state.json").write_text("{}")
    with pytest.raises(RunFolderError, match="holds a irpo run"):
        simulate(cfg, tmp_path / "old-irpo", progress=False, **resources(cfg))


# ------------------------------------------------------------------------------------------------
# Inputs are fingerprinted: a resume refuses changed data


def test_resume_refuses_a_changed_input(tmp_path, data, resources) -> None:
    cfg = config(steps=4, data=str(data))
    short = cfg.with_overrides(["market.steps=2"])
    simulate(short, tmp_path / "run", progress=False, **resources(short))
    queries = pd.read_parquet(data / "queries.parquet")
    queries.loc[0, "query"] = "a different question?"
    queries.to_parquet(data / "queries.parquet")
    with pytest.raises(RunFolderError, match=r"changed since .* \(queries.parquet differ\)"):
        simulate(cfg, tmp_path / "run", resume=True, progress=False, **resources(cfg))
    assert list(pd.read_parquet(tmp_path / "run" / "metrics.parquet")["step"]) == [1, 2]


# ------------------------------------------------------------------------------------------------
# One writer per folder; the OS releases the lock of a killed process


def test_a_second_writer_fails_at_once(capsys, tmp_path, data, resources) -> None:
    cfg = config(data=str(data))
    simulate(cfg, tmp_path / "run", progress=False, **resources(cfg))
    with open_run_folder(tmp_path / "run", "simulate"):  # a run still going
        start = time.time()
        one_line_error(capsys, ["simulate", "--resume", "--out", str(tmp_path / "run"),
                                "--data", str(data), "--steps", "5"],
                       "is in use by another process", f"pid {os.getpid()}")
        assert time.time() - start < 5
    assert list(pd.read_parquet(tmp_path / "run" / "metrics.parquet")["step"]) == [1, 2, 3]


def test_a_killed_holder_releases_the_lock(tmp_path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from llmauction_sim.runfolder import acquire
            acquire({str(tmp_path / 'run')!r}, "simulate")
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"in use by another process \\(pid "
                                                 f"{holder.pid}\\)"):
            acquire(tmp_path / "run", "simulate")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire(tmp_path / "run", "simulate").close()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_carry_the_pid_and_only_dead_writers_ones_are_removed(tmp_path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / ".state").mkdir(parents=True)
        dead = tmp_path / ".state" / f".step-000003.queries.parquet.{_dead_pid()}.tmp"
        mine = tmp_path / f".metrics.png.{os.getpid()}.tmp.png"
        other = tmp_path / ".state" / f".step-000003.queries.parquet.{live.pid}.tmp"
        legacy = tmp_path / ".queries.parquet.tmp"  # no pid: nobody can tell whose it is
        for path in (dead, mine, other, legacy):
            path.write_text("partial")
        (tmp_path / f".adapter.{_dead_pid()}.tmp").mkdir()
        assert clean_temps(tmp_path) == 3
        assert other.exists() and legacy.exists() and not dead.exists() and not mine.exists()
    finally:
        live.kill()
        live.wait()


def test_table_writes_use_per_process_temp_names(tmp_path, monkeypatch) -> None:
    from llmauction_sim import tables

    seen = []
    real = tables.pq.write_table
    monkeypatch.setattr(tables.pq, "write_table",
                        lambda table, where: (seen.append(Path(where).name), real(table, where)))
    tables.write_query_log(pd.DataFrame({"query_id": ["Q-1"]}), tmp_path / "queries.parquet")
    assert seen == [f".queries.parquet.{os.getpid()}.tmp"]


# ------------------------------------------------------------------------------------------------
# Sweeps: keyed by settings, workers in their own process group and ended with the sweep

SWEEP = """
kind = "equilibrium"
seeds = [0]
max_workers = 2
[base]
rounds = {rounds}
auctions_per_round = 50
advertisers = "vm:2,um:2"
[grid]
mechanism = {mechanisms}
"""


def test_a_reordered_grid_reports_each_result_under_its_own_settings(tmp_path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(rounds=3, mechanisms='["first_price", "second_price"]'))
    first = run_sweep(path, tmp_path / "s", executor="local")
    path.write_text(SWEEP.format(rounds=3, mechanisms='["second_price", "first_price"]'))
    assert sorted(r.run_id for r in load_sweep(path).runs) == sorted(first["run_id"])
    second = run_sweep(path, tmp_path / "s", executor="local")
    for table in (first, second):
        for _, row in table.iterrows():
            assert json.loads(row["overrides"]) == [f"mechanism={row['mechanism']}"]
    assert list(second["mechanism"]) == ["second_price", "first_price"]
    # Other base settings are other runs, not the finished ones.
    path.write_text(SWEEP.format(rounds=4, mechanisms='["first_price"]'))
    assert load_sweep(path).runs[0].run_id not in set(first["run_id"])


def test_a_killed_sweep_takes_its_workers_with_it(tmp_path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(rounds=10**6, mechanisms='["first_price", "second_price"]'))
    sweep = subprocess.Popen([sys.executable, "-m", "llmauction_sim.cli", "sweep", str(path),
                              "--out", str(tmp_path / "s"), "--executor", "process"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [tmp_path / "s" / "runs" / r.run_id / ".lock" for r in load_sweep(path).runs]
    workers: list[int] = []
    deadline = time.time() + 90
    while time.time() < deadline and len(workers) < len(locks):
        workers = [int(p.read_text()) for p in locks if p.is_file() and p.read_text().strip()]
        time.sleep(0.1)
    try:
        assert len(workers) == len(locks), "the workers never started their runs"
        assert all(os.getpgid(pid) == pid for pid in workers)  # a group of their own
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(_running(pid) for pid in workers), "orphaned sweep workers"
    finally:
        sweep.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ------------------------------------------------------------------------------------------------
# A failed start does not block the retry; a resume never shrinks a run


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(capsys, tmp_path, data,
                                                             resources) -> None:
    out = tmp_path / "run"
    one_line_error(capsys, ["simulate", "--out", str(out), "--data", str(tmp_path / "nowhere"),
                            "--steps", "3"], "is not a data folder")
    err = one_line_error(capsys, ["simulate", "--out", str(out), "--data", str(data),
                                  "--resume"], "no run to resume")
    assert "another config" not in err
    cfg = config(data=str(data))
    simulate(cfg, out, progress=False, **resources(cfg))  # the corrected command
    assert list(pd.read_parquet(out / "metrics.parquet")["step"]) == [1, 2, 3]


def test_resume_never_shrinks_a_finished_run(tmp_path, data, resources) -> None:
    cfg = config(steps=4, data=str(data))
    simulate(cfg, tmp_path / "run", progress=False, **resources(cfg))
    before = [t.copy() for t in run_tables(tmp_path / "run")]
    shorter = cfg.with_overrides(["market.steps=2"])
    with pytest.raises(RunFolderError, match="has 4 finished rounds.*--steps 4 or more"):
        simulate(shorter, tmp_path / "run", resume=True, progress=False, **resources(shorter))
    for x, y in zip(before, run_tables(tmp_path / "run")):
        pd.testing.assert_frame_equal(x, y)


# ------------------------------------------------------------------------------------------------
# File-system and input errors: one line naming the path and the fix, before any model work


def test_an_out_that_is_a_file_or_under_a_file(capsys, tmp_path, data) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    start = time.time()
    one_line_error(capsys, ["evaluate", "--mechanism", "pretrained", "--out",
                            str(tmp_path / "a-file"), "--data", str(data)],
                   "a-file is a file, not a folder")
    one_line_error(capsys, ["evaluate", "--mechanism", "pretrained", "--out",
                            str(tmp_path / "a-file" / "sub"), "--data", str(data)],
                   "cannot write to", "give a writable --out")
    assert time.time() - start < 10  # refused before any model loads


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out(capsys, tmp_path, data) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        one_line_error(capsys, ["evaluate", "--mechanism", "pretrained", "--out",
                                str(tmp_path / "ro"), "--data", str(data)], "cannot write to")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_malformed_data_folders(capsys, tmp_path, data) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    profiles = pd.read_parquet(data / "profiles.parquet")
    profiles.to_parquet(bad / "profiles.parquet")
    pd.read_parquet(data / "queries.parquet").drop(columns=["query", "split"]).to_parquet(
        bad / "queries.parquet")
    one_line_error(capsys, ["simulate", "--out", str(tmp_path / "r1"), "--data", str(bad)],
                   "queries.parquet lacks the column(s) split, query", "data build --out")
    pd.read_parquet(data / "queries.parquet").to_parquet(bad / "queries.parquet")
    profiles["interests"] = "cooking, travel"
    profiles.to_parquet(bad / "profiles.parquet")
    one_line_error(capsys, ["simulate", "--out", str(tmp_path / "r2"), "--data", str(bad)],
                   "'interests' must hold lists of strings")
    (bad / "profiles.parquet").write_bytes(b"cut short")
    one_line_error(capsys, ["simulate", "--out", str(tmp_path / "r3"), "--data", str(bad)],
                   "profiles.parquet is not a readable Parquet table")


@pytest.mark.parametrize("argv, needles", [
    (["bid-sweep", "--mechanism", "pretrained", "--mode", "monotonicity", "--repeats", "0"],
     ["--repeats = 0 must be >= 1"]),
    (["bid-sweep", "--mechanism", "pretrained", "--mode", "monotonicity", "--bids", "nan,inf"],
     ["give finite bids"]),
    (["equilibrium", "--advertisers", "vm:1000000000"],
     ["1,000,000,000 advertisers", "PB of memory but this machine has"]),
    (["simulate", "--set", "penalty.per_ad=inf"], ["penalty.per_ad = inf is not finite"]),
])
def test_bad_numbers_are_refused_in_one_line(capsys, tmp_path, data, argv, needles) -> None:
    out = tmp_path / "out"
    one_line_error(capsys, [*argv, "--out", str(out), *(["--data", str(data)]
                                                       if argv[0] == "bid-sweep" else [])],
                   *needles)
    assert not (out / "summary.json").exists()


def test_inf_is_refused_for_float_fields() -> None:
    for override in ("penalty.per_ad=inf", "mechanisms.mosaic.tau=-inf",
                     "mechanisms.pregen_gsp.slot_weights=1,inf"):
        with pytest.raises(ConfigError, match="not finite"):
            RunConfig().with_overrides([override])


def test_a_resume_reuses_the_sentence_vectors_of_the_interrupted_run(tmp_path,
                                                                      text_encoder) -> None:
    """A text's vector depends in its last bits on the batch it was encoded in; a resumed run
    must get the interrupted run's vectors back, not encode the text again."""
    import copy
    from types import SimpleNamespace

    import numpy as np

    from llmauction_sim.lm.encoder import MemoLog

    def fresh():
        encoder = copy.copy(text_encoder)
        encoder._memo = {}
        return encoder

    text = "Interested in cooking, travel, fitness"
    first = fresh()
    log = MemoLog(SimpleNamespace(judge=SimpleNamespace(encoder=first)))
    assert log.encoders == [first]
    batch = first.encode([text, "a much longer text that pads the batch " * 4, "x"])
    log.save(tmp_path / "step-000001.encoder.npz")
    resumed = fresh()
    MemoLog(SimpleNamespace(encoder=resumed)).load(tmp_path / "step-000001.encoder.npz")
    assert np.array_equal(resumed.encode([text])[0], batch[0])


# --- classic equilibrium: checkpoints, resume, no silent overwrite --------------------------------

def _classic(rounds: int):
    return RunConfig(seed=3).with_overrides([
        "classic.mechanism=first_price", "classic.advertisers=vm:2,um:2",
        f"classic.rounds={rounds}", "classic.auctions_per_round=50"])


def test_classic_equilibrium_resumes_an_interrupted_run_exactly(tmp_path, monkeypatch) -> None:
    import llmauction_sim.classic.equilibrium as eq

    whole = eq.run_from_config(_classic(30), tmp_path / "whole")
    real_update = eq.Bidders.update
    calls = {"n": 0}

    def crash_in_round_23(self, feedback):
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt  # stands in for a kill between checkpoints
        return real_update(self, feedback)

    monkeypatch.setattr(eq.Bidders, "update", crash_in_round_23)
    with pytest.raises(KeyboardInterrupt):
        eq.run_from_config(_classic(30), tmp_path / "cut")
    monkeypatch.setattr(eq.Bidders, "update", real_update)
    assert pickle_rounds(tmp_path / "cut") == 22  # rounds done before the crash
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = eq.run_from_config(_classic(30), tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(resumed.rounds, whole.rounds)
    pd.testing.assert_frame_equal(resumed.market, whole.market)
    assert resumed.summary == whole.summary
    # Extending a finished run equals running the longer run at once.
    eq.run_from_config(_classic(40), tmp_path / "cut", resume=True)
    longer = eq.run_from_config(_classic(40), tmp_path / "longer")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cut" / "rounds.parquet"),
                                  longer.rounds)


def pickle_rounds(folder: Path) -> int:
    import pickle

    return pickle.loads((folder / ".state" / "loop.pkl").read_bytes())["t"]


def test_classic_equilibrium_never_overwrites_or_shrinks_a_run(capsys, tmp_path) -> None:
    out = tmp_path / "eq"
    argv = ["equilibrium", "--mechanism", "first_price", "--advertisers", "um:2",
            "--auctions-per-round", "20", "--out", str(out)]
    assert main([*argv, "--rounds", "10"]) == 0
    before = (out / "rounds.parquet").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--rounds", "10"]) != 0  # no silent overwrite
    assert "already holds an equilibrium run" in capsys.readouterr().err
    assert main([*argv, "--rounds", "5", "--resume"]) != 0  # nor a shrink
    assert "would drop some" in capsys.readouterr().err
    assert main([*argv, "--rounds", "10", "--seed", "4", "--resume"]) != 0
    assert "another config" in capsys.readouterr().err
    assert (out / "rounds.parquet").read_bytes() == before
