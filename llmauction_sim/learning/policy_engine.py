"""IRPO's policy on a generation engine (`ad_llm.backend = "vllm"`): sampling where the volume is.

The trained policy lives in Hugging Face form (DPO trains it there); generation runs on one vLLM
engine started over a folder that holds the policy's merged weights. Whenever IRPO sets a new
policy (start, warm start, after every DPO phase, on resume) the folder is rewritten and the
engine reloads the weights in place from it (vLLM's `reload_weights`), so it keeps its memory,
and its prefix cache, computed with the old weights, is dropped.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmauction_sim.lm.registry import load_language_model


def merged_state_dict(model) -> dict:
    """The weights of `model` with any LoRA adapters added in, under the plain model's names,
    without changing `model` (merging in place and back is not exact in bf16)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model.state_dict()
    base = model.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items()
             if "lora_" not in k}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            key = f"{name}.weight"
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}):
                    state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def save_merged(model, tokenizer, folder: Path) -> Path:
    """`model`'s merged weights, config and tokenizer in `folder` (replaced whole)."""
    from peft import PeftModel

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain = model.get_base_model() if isinstance(model, PeftModel) else model
    plain.save_pretrained(str(tmp), state_dict=merged_state_dict(model))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def start_vllm_engine(config) -> Callable[[Path], Any]:
    """`folder -> LanguageModel`: a vLLM engine over the folder, sized by the memory plan."""
    def start(folder: Path):
        model_config = dataclasses.replace(config.ad_llm, name=str(folder), adapter=None)
        return load_language_model(model_config, seed=config.seed, run_config=config)
    return start


class EnginePolicy:
    """`make_lm(model, tokenizer)` for IRPO on an engine: save the policy's merged weights to
    `folder`, start the engine on the first call and reload its weights on every later one."""

    def __init__(self, folder: Path, start: Callable[[Path], Any]):
        self.folder = Path(folder)
        self.start = start
        self.lm = None
        self.reloads = 0

    def __call__(self, model, tokenizer):
        save_merged(model, tokenizer, self.folder)
        if self.lm is None:
            self.lm = self.start(self.folder)
        else:
            self.lm.reload_weights()
            self.reloads += 1
        return self.lm
