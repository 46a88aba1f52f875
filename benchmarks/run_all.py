"""Every benchmark in one go; writes their figures into docs/performance.md.

Each benchmark measures our path and its baseline in the same run and prints JSON; this script runs
them one after the other (never in parallel: they share the CPU), keeps the raw JSON in
docs/results/benchmarks.json and rewrites the summary table between the markers in
docs/performance.md after each one (with --only, the other benchmarks' last figures are kept).

    python benchmarks/run_all.py [--quick] [--only generate,auctions,market,dpo,sft,scoring,dtype]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"

# name: (script, arguments, arguments with --quick, how to read the result)
BENCHMARKS = {
    "generate": ("bench_generate.py", [],
                 ["--prompts", "16", "--naive-prompts", "4", "--max-new-tokens", "32"],
                 ("Ad-LLM generation, tokens/s", "naive `model.generate` loop", "naive_tok_s",
                  "batched LM layer", "batched_tok_s", "higher")),
    "auctions": ("bench_auctions.py", [], ["--auctions-per-round", "20000", "--rounds", "5"],
                 ("classic first-price auctions with learning bidders, auctions/s",
                  "per-auction Python loop", "loop_auctions_per_s", "vectorized numpy",
                  "vectorized_auctions_per_s", "higher")),
    "market": ("bench_market.py", [], ["--steps", "1", "--queries-per-step", "4"],
               ("market round end to end, seconds/round", "one query per call",
                "per_query_s_per_step", "batched round", "batched_s_per_step", "lower")),
    "dpo": ("bench_dpo.py", ["--pairs", "4", "--steps", "2"], ["--pairs", "4", "--steps", "1"],
            ("DPO step on 4 pairs (LoRA r=16, all linear layers), seconds/step", "TRL defaults "
             "(float32 under bf16 autocast, checkpointing, reference every step, the paper's "
             "prompt)", "trl_defaults_s_per_step", "ours (model dtype, no checkpointing, "
             "reference once, compact prompt, compact fused head)", "ours_s_per_step", "lower")),
    "sft": ("bench_sft.py", [], ["--examples", "16"],
            ("SFT step (warm start, batch 8), seconds/step", "TRL's CPU default (every position "
             "through the fused head)", "trl_cpu_default_s_per_step",
             "labelled positions only", "compact_s_per_step", "lower")),
    "scoring": ("bench_scoring.py", [], ["--prompts", "6", "--samples", "3",
                                         "--max-new-tokens", "32"],
                ("MOSAIC's scoring of M=5 answers per prompt (log p and log q), answers/s",
                 "`score` twice, a full sequence per answer", "score_twice_answers_per_s",
                 "`score_samples`: prompt once, one pass for both", "score_samples_answers_per_s",
                 "higher")),
    "dtype": ("bench_generate.py", ["--skip-naive", "--compare-dtypes", "--prompts", "32",
                                    "--max-new-tokens", "96"],
              ["--skip-naive", "--compare-dtypes", "--prompts", "8", "--max-new-tokens", "32"],
              ("Ad-LLM generation by dtype, tokens/s", "float32 (with the CPU kernels)",
               "batched_tok_s", "bfloat16", "bf16_tok_s", "higher")),
}


def run(name: str, quick: bool) -> dict:
    script, full, small, _ = BENCHMARKS[name]
    command = [sys.executable, str(HERE / script), "--json", *(small if quick else full)]
    print(f"[run_all] {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["command"] = "python benchmarks/" + " ".join([script, *command[3:]])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def table(results: dict) -> str:
    lines = ["| benchmark | baseline | ours | ratio | command |", "|---|---|---|---|---|"]
    for name, r in results.items():
        what, base_name, base_key, ours_name, ours_key, better = BENCHMARKS[name][3]
        base, ours = r[base_key], r[ours_key]
        ratio = ours / base if better == "higher" else base / ours
        lines.append(f"| {what} | {base_name}: {base:,.4g} | {ours_name}: {ours:,.4g} | "
                     f"**{ratio:.1f}x** | `{r['command']}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--raw", default=str(ROOT / "docs" / "results" / "benchmarks.json"))
    args = parser.parse_args(argv)

    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmarks {sorted(unknown)}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
               f"{torch.__version__}, Python {platform.python_version()}")
    raw = Path(args.raw)
    # Figures of benchmarks not rerun this time are kept, so a subset updates its own rows only.
    results = json.loads(raw.read_text())["results"] if raw.is_file() else {}
    for name in names:
        results[name] = run(name, args.quick)
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps({"machine": machine, "quick": args.quick,
                                   "results": results}, indent=2) + "\n")
        write_doc(Path(args.doc), results, machine, args.quick)
    print(table(results))
    return 0


def write_doc(doc: Path, results: dict, machine: str, quick: bool) -> None:
    section = (f"{BEGIN}\nMeasured by `python benchmarks/run_all.py{' --quick' if quick else ''}`"
               f" ({machine}); raw figures in `docs/results/benchmarks.json`.\n\n"
               f"{table(results)}\n{END}")
    text = doc.read_text() if doc.is_file() else "# Performance\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip("\n") + "\n\n## All benchmarks (`benchmarks/run_all.py`)\n\n"
                + section + "\n")
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
