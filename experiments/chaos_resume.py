"""Chaos run: kill `simulate`, `sweep` and `irpo` with SIGKILL at random points, resume, and check
that every resumed run's result tables equal the uninterrupted run's, byte for byte.

    python experiments/chaos_resume.py --work runs/chaos --runs 2 --kills 3
    python experiments/chaos_resume.py --commands simulate,sweep --kills 2   # skip irpo

Small, cheap settings: a template-written data build, a tiny random llama (the embedded model's
tokenizer) as the Ad-LLM, the embedding click judge. Per command: one uninterrupted reference run
(its wall time T), then `--runs` runs that are each started, killed after a random delay in
[0.1 T, T], restarted the way a user would (`--resume` once the run has started; a sweep is just
rerun) up to `--kills` times, then run to the end and compared. A kill during start-up (before
any round or phase is committed) also checks that a failed start does not block the retry. A
killed sweep must take its workers with it: a worker still holding its run folder's lock 10 s
after the kill counts as an orphan. Prints, per command: runs, kills (and how many came after some
work was committed), resumes, mismatches, orphans, failures; exits 1 unless mismatches, orphans
and failures are all 0. docs/run_folders.md has the figures.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CLI = [sys.executable, "-m", "llmauction_sim.cli"]
# Fields that hold timings, not results.
TIMING_COLUMNS = {"seconds"}
TIMING_KEYS = {"seconds", "seconds_per_query"}


def tiny_model(folder: Path) -> Path:
    """A 1-layer random llama with the embedded model's tokenizer (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmauction_sim.lm import registry

    tokenizer = AutoTokenizer.from_pretrained(registry.resolve_model(registry.EMBEDDED_MODEL))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def commands(work: Path, model: Path, data: Path) -> dict:
    """Per command: (argv for a run into OUT, argv to continue it, the result files)."""
    lm = ["--set", f"ad_llm.name={model}", "--set", "ad_sampling.max_new_tokens=16",
          "--set", "ad_llm.max_batch_size=16"]
    simulate = ["simulate", "--data", str(data), "--steps", "10", "--queries-per-step", "4",
                "--judge", "embedding", "--seed", "3", "--quiet", *lm]
    sweep_file = work / "sweep.toml"
    sweep_file.write_text(
        'kind = "simulate"\nseeds = [0]\nmax_workers = 2\n[base]\n'
        f'market = {{ steps = 4, queries_per_step = 4, data = "{data}" }}\n'
        'clicks = { judge = "embedding" }\n'
        f'ad_llm = {{ name = "{model}", max_batch_size = 16 }}\n'
        'ad_sampling = { max_new_tokens = 16 }\n'
        '[grid]\n"market.mechanism" = ["pretrained", "llm_auction_tilted"]\n')
    irpo = ["irpo", "--data", str(data), "--epochs", "1", "--train-queries", "4",
            "--test-queries", "2", "--seed", "3", "--quiet", *lm,
            "--set", "clicks.judge=embedding", "--set", "irpo.samples_per_query=2",
            "--set", "irpo.candidates_per_prompt=2", "--set", "pctr.epochs=2",
            "--set", "dpo.max_steps=2", "--set", "dpo.batch_size=2",
            "--set", "dpo.max_length=512", "--set", "warmstart.queries=0"]
    return {
        "simulate": (lambda out: [*simulate, "--out", str(out)],
                     lambda out: [*simulate, "--out", str(out),
                                  *(["--resume"] if (out / "config.json").is_file() else [])],
                     simulate_tables),
        "sweep": (lambda out: ["sweep", str(sweep_file), "--out", str(out)],
                  lambda out: ["sweep", str(sweep_file), "--out", str(out)],
                  sweep_tables),
        "irpo": (lambda out: [*irpo, "--out", str(out)],
                 lambda out: [*irpo, "--out", str(out), "--resume"],
                 irpo_tables),
    }


def _bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json(path: Path) -> str:
    data = json.loads(path.read_text())
    return json.dumps({k: v for k, v in data.items() if k not in TIMING_KEYS}, sort_keys=True)


def simulate_tables(out: Path) -> dict[str, str]:
    tables = {n: _bytes(out / n) for n in ("queries.parquet", "metrics.parquet",
                                           "advertisers.parquet")}
    return {**tables, "summary.json": _json(out / "summary.json")}


def sweep_tables(out: Path) -> dict[str, str]:
    found = {"summary.parquet": _bytes(out / "summary.parquet")}
    for run in sorted((out / "runs").iterdir()):
        found.update({f"{run.name}/{k}": v for k, v in simulate_tables(run).items()})
    return found


def irpo_tables(out: Path) -> dict[str, str]:
    epochs = pd.read_parquet(out / "epochs.parquet")
    found = {"epochs.parquet": epochs.drop(columns=list(TIMING_COLUMNS & set(epochs.columns)))
             .to_json()}
    for path in sorted(out.glob("epoch-*/**/*.parquet")):
        found[str(path.relative_to(out))] = _bytes(path)
    for path in sorted(out.glob("epoch-*/eval/summary.json")):
        found[str(path.relative_to(out))] = _json(path)
    return found


def _locked(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def orphans(out: Path, wait: float = 10.0) -> int:
    """Sweep workers still holding a run's lock `wait` s after the sweep died (then ended)."""
    locks = list((out / "runs").glob("*/.lock")) if (out / "runs").is_dir() else []
    deadline = time.time() + wait
    while time.time() < deadline and any(_locked(p) for p in locks):
        time.sleep(0.2)
    held = [p for p in locks if _locked(p)]
    for lock in held:  # end them so the next attempt is not refused
        try:
            os.kill(int(lock.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    return len(held)


def progressed(out: Path) -> bool:
    """Whether a killed run had committed work (a market round, a sweep run's round, an IRPO
    phase) rather than dying during start-up."""
    return any(p.is_file() for p in (out / ".state" / "market.json", out / "state.json")) \
        or any((out / "runs").glob("*/.state/market.json"))


def run(argv: list[str], env: dict, log: Path, kill_after: float | None = None
        ) -> tuple[int | None, float]:
    """Run a CLI command; SIGKILL it after `kill_after` s. (exit code or None if killed, s)."""
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([*CLI, *argv], env=env, stdout=f, stderr=f)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None, time.time() - start
    return proc.returncode, time.time() - start


def chaos(name: str, spec, work: Path, runs: int, kills: int, rng, env) -> dict:
    start_argv, resume_argv, tables = spec
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "commands.log"
    ref = folder / "reference"
    if not ref.exists():
        code, seconds = run(start_argv(ref), env, log)
        if code != 0:
            raise SystemExit(f"{name}: the reference run failed (exit {code}); see {log}")
        (folder / "reference.seconds").write_text(f"{seconds}\n")
    seconds = float((folder / "reference.seconds").read_text())
    expected = tables(ref)
    figures = {"command": name, "runs": 0, "kills": 0, "kills_after_progress": 0, "resumes": 0,
               "mismatches": 0, "orphans": 0, "failures": 0,
               "reference_seconds": round(seconds, 1)}
    for r in range(runs):
        out = folder / f"run-{r}"
        attempts = 0
        while attempts < kills:
            argv = start_argv(out) if attempts == 0 else resume_argv(out)
            code, _ = run(argv, env, log, kill_after=float(rng.uniform(0.1, 1.0)) * seconds)
            figures["resumes"] += attempts > 0
            attempts += 1
            if code is not None:  # finished before the kill
                figures["failures"] += code != 0
                break
            figures["kills"] += 1
            figures["kills_after_progress"] += progressed(out)
            if name == "sweep":
                figures["orphans"] += orphans(out)
        code, _ = run(resume_argv(out), env, log)
        figures["resumes"] += 1
        figures["failures"] += code != 0
        figures["runs"] += 1
        if code == 0:
            got = tables(out)
            bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
            if bad:
                print(f"{name} run {r}: differs in {', '.join(bad)}", file=sys.stderr)
            figures["mismatches"] += len(bad)
            figures["tables_compared"] = len(expected)
        print(f"[chaos] {name} run {r} done: {figures}", file=sys.stderr, flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/chaos"))
    parser.add_argument("--commands", default="simulate,sweep,irpo")
    parser.add_argument("--runs", type=int, default=2, help="killed runs per command")
    parser.add_argument("--kills", type=int, default=3, help="kills per run (at most)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    model = tiny_model(work / "tiny-model")
    data = work / "data"
    if not (data / "queries.parquet").is_file():
        subprocess.run([*CLI, "data", "build", "--out", str(data), "--profiles", "12",
                        "--writer", "template", "--quiet"], check=True, env=env)
    specs = commands(work, model, data)
    rng = np.random.default_rng(args.seed)
    rows = []
    for name in args.commands.split(","):
        rows.append(chaos(name, specs[name], work, args.runs, args.kills, rng, env))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    (work / "chaos.json").write_text(json.dumps(rows, indent=2) + "\n")
    bad = table[["mismatches", "orphans", "failures"]].to_numpy().sum()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
