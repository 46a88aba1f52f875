"""Regenerate the adapters shipped in llmauction_sim/resources/adapters/ (one command).

    python experiments/train_shipped_adapters.py --data data/q300 --work runs/shipped

`smollm2-135m-warmstart`, the format warm start of the embedded model (learning/warmstart.py):
the base model's own short answers to training questions with one mention of a candidate drawn
uniformly at random (a quarter without), LoRA SFT, then the gate on held-out test auctions
(mention rate, format errors, early mentions, choice independent of the bids). The adapter is
written in float16 safetensors with a manifest: the command, commit, seed, settings, training
metrics, the held-out gate and the files' SHA-256. A warm start that fails its gate is written to
--work only, never shipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.lm.registry import ADAPTERS_DIR, EMBEDDED_MODEL  # noqa: E402
from llmauction_sim.manifest import environment, write_json  # noqa: E402

NAME = "smollm2-135m-warmstart"
# The shipped warm start's settings (on top of RunConfig's defaults).
SETTINGS = ["warmstart.lora_r=8", "warmstart.epochs=2", "warmstart.batch_size=8",
            "warmstart.learning_rate=1e-3"]
_TRAIN_PICK, _TRAIN_BIDS, _ANSWERS, _INSERT, _GATE = 51, 52, 53, 54, 55


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_float16(folder: Path) -> None:
    """Rewrite the adapter's weights in float16 (half the size; LoRA deltas lose nothing that
    matters at this scale, and loading casts them back up)."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = {k: v.half().contiguous() for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def train_auctions(config, data: Path, count: int, seed: int):
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.learning.irpo_run import train_auctions as _train_auctions
    from llmauction_sim.learning.irpo_run import with_bids as _with_bids
    from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder

    catalog = load_catalog(config.data.catalog)
    retriever = CandidateRetriever(catalog, load_encoder(config.retrieval.encoder),
                                   config.retrieval.num_candidates,
                                   config.retrieval.profile_weight)
    auctions = _train_auctions(config, data, retriever, catalog, count, _TRAIN_PICK)
    return (_with_bids(config, auctions, np.random.default_rng([seed, _TRAIN_BIDS])), catalog,
            retriever)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `llmauction data build` folder")
    parser.add_argument("--work", type=Path, default=Path("runs/shipped"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=ADAPTERS_DIR, help="adapters folder")
    parser.add_argument("--queries", type=int, default=600, help="training auctions")
    parser.add_argument("--test-queries", type=int, default=240, help="held-out gate auctions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args(argv)

    from llmauction_sim.evaluation import test_auctions
    from llmauction_sim.learning.warmstart import (
        build_examples,
        evaluate_gate,
        own_answers,
        run_sft,
    )
    from llmauction_sim.lm.hf import TransformersLM, load_trainable
    from llmauction_sim.lm.registry import load_language_model

    config = RunConfig(seed=args.seed).with_overrides(SETTINGS + args.set)
    if config.ad_llm.name != EMBEDDED_MODEL or config.ad_llm.adapter:
        raise SystemExit(f"the shipped warm start is for the plain {EMBEDDED_MODEL}")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    requests, catalog, retriever = train_auctions(config, args.data, args.queries, args.seed)
    base = load_language_model(config.ad_llm, seed=args.seed)
    answers = own_answers(base, requests, config.ad_sampling,
                          np.random.default_rng([args.seed, _ANSWERS]))
    examples = build_examples(requests, answers, config.warmstart.ads_per_answer,
                              np.random.default_rng([args.seed, _INSERT]), config.ad_prompt,
                              config.warmstart.no_ad_rate, config.warmstart.max_sentences)
    (args.work / "examples.jsonl").write_text("".join(
        json.dumps({"query_id": r.query_id, "answer": a, "completion": e.completion,
                    "inserted": list(e.inserted)}) + "\n"
        for r, a, e in zip(requests, answers, examples)))
    print(f"{len(examples)} SFT examples ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    model, tokenizer = load_trainable(config.ad_llm)
    adapter, trained = args.work / NAME, args.work / "sft.json"
    if trained.is_file():  # an earlier run of this command trained it: resume after the SFT
        from llmauction_sim.learning.warmstart import WarmStartResult, load_warm_started

        result = WarmStartResult(load_warm_started(model, adapter), json.loads(trained.read_text()))
    else:
        shutil.rmtree(adapter, ignore_errors=True)
        result = run_sft(model, tokenizer, examples, config.warmstart, config.dpo,
                         output_dir=adapter)
        write_json(trained, result.metrics)
    print(f"SFT {result.metrics} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    tests, _, _ = test_auctions(config, args.test_queries, args.work, args.data,
                                retriever=retriever, catalog=catalog)
    policy = TransformersLM(result.model, tokenizer, name=NAME, seed=args.seed,
                            max_batch_size=config.ad_llm.max_batch_size)
    gate = evaluate_gate(config, policy, tests, catalog.ids,
                         np.random.default_rng([args.seed, _GATE]))
    print(json.dumps(gate, indent=1), file=sys.stderr)
    to_float16(adapter)
    (adapter / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    manifest = {
        "name": NAME, "base_model": EMBEDDED_MODEL,
        "command": "python experiments/train_shipped_adapters.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "settings": SETTINGS + args.set,
        "warmstart": config.warmstart.to_dict(), "ad_prompt": config.ad_prompt.to_dict(),
        "ad_sampling": config.ad_sampling.to_dict(), "training_auctions": len(examples),
        "training": result.metrics, "held_out_gate": gate,
        "seconds": round(time.perf_counter() - start, 1), "environment": environment(),
        "files": {p.name: sha256(p) for p in sorted(adapter.iterdir()) if p.is_file()}}
    write_json(adapter / "manifest.json", manifest)
    if not gate["passed"]:
        print(f"the warm start failed its gate ({gate['checks']}); kept in {adapter}, not "
              "shipped", file=sys.stderr)
        return 1
    final = args.out / NAME
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(adapter, final)
    print(f"shipped {final}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
