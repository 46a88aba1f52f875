"""One DPO phase in its own processes, under `accelerate launch` (DDP or DeepSpeed ZeRO-2/3).

IRPO runs the phase this way when `dpo.launcher` names an accelerate config (docs/scaling.md):
the policy at the epoch's start is read from disk (a model folder and/or a LoRA adapter), every
rank trains on the epoch's pairs folder, and the main rank writes the new adapter or model and the
metrics. The parent process then loads the result like a resumed run does.

    accelerate launch --config_file ddp.yaml -m llmauction_sim.learning.dpo_launch \
        --config RUN_CONFIG.json --pairs PAIRS_DIR --model MODEL [--adapter ADAPTER] --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from llmauction_sim.config import RunConfig
from llmauction_sim.learning.dpo import run_dpo_phase
from llmauction_sim.manifest import write_json
from llmauction_sim.paths import accelerate_config

METRICS = "dpo_metrics.json"


def launch_command(config, pairs: Path, model: str, adapter: str | None, out: Path) -> list[str]:
    """The `accelerate launch` command line of one DPO phase."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(accelerate_config(config.dpo.launcher))]
    if config.dpo.num_processes:
        command += ["--num_processes", str(config.dpo.num_processes)]
    command += ["-m", "llmauction_sim.learning.dpo_launch", "--config", str(out / "config.json"),
                "--pairs", str(pairs), "--model", model, "--out", str(out)]
    return command + (["--adapter", adapter] if adapter else [])


def launch_dpo_phase(config, pairs: Path, model: str, adapter: str | None, out: Path) -> dict:
    """Run the phase under `accelerate launch`; the adapter or model goes to OUT, its metrics are
    returned. Raises RuntimeError (with the log's tail) when the launch fails."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    command = launch_command(config, pairs, model, adapter, out)
    proc = subprocess.run(command, capture_output=True, text=True)
    (out / "launch.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (out / METRICS).is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"the DPO phase under `accelerate launch` failed (exit "
                           f"{proc.returncode}); command: {' '.join(command)}\n{tail}")
    (out / "config.json").unlink()
    return json.loads((out / METRICS).read_text())


def main(argv=None) -> int:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmauction_sim.lm.registry import resolve_model

    parser = argparse.ArgumentParser(description="one IRPO DPO phase (run by accelerate launch)")
    parser.add_argument("--config", required=True, help="the run's config.json")
    parser.add_argument("--pairs", required=True, help="the epoch's pairs folder (datasets)")
    parser.add_argument("--model", required=True, help="model name or folder of the policy")
    parser.add_argument("--adapter", help="the policy's LoRA adapter, when it has one")
    parser.add_argument("--out", required=True, help="folder for the new adapter or model")
    args = parser.parse_args(argv)

    config = RunConfig.from_dict(json.loads(Path(args.config).read_text()))
    path = resolve_model(args.model)
    dtype = torch.bfloat16 if config.dpo.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    result = run_dpo_phase(model, tokenizer, load_from_disk(args.pairs), config.dpo,
                           output_dir=args.out)
    if result.is_main_process:
        tmp = Path(args.out) / f".{METRICS}.{os.getpid()}"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tmp.write_text(json.dumps({**result.metrics, "world_size": world}))
        os.replace(tmp, Path(args.out) / METRICS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
