"""The adapters shipped in llmauction_sim/resources/adapters/: complete, matching their manifests,
loadable, and for the warm start, the figures its gate promised."""

import hashlib
import json

import pytest

from llmauction_sim.lm.registry import (
    ADAPTERS_DIR,
    EMBEDDED_MODEL,
    ModelNotFoundError,
    packaged_adapter_base,
    packaged_adapters,
    resolve_adapter,
)

WARM_START = "smollm2-135m-warmstart"


def test_the_warm_start_is_shipped() -> None:
    assert WARM_START in packaged_adapters(), (
        f"{ADAPTERS_DIR / WARM_START} is missing; regenerate it with "
        "`python experiments/train_shipped_adapters.py --data DIR`")
    assert resolve_adapter(WARM_START) == ADAPTERS_DIR / WARM_START
    assert packaged_adapter_base(WARM_START) == EMBEDDED_MODEL


@pytest.mark.parametrize("name", sorted(packaged_adapters()))
def test_files_match_the_manifest(name) -> None:
    folder = ADAPTERS_DIR / name
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {p.name for p in folder.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert files == set(manifest["files"])
    for file, digest in manifest["files"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
    assert (folder / "adapter_model.safetensors").stat().st_size < 16 * 2**20
    for key in ("command", "seed", "base_model", "held_out_gate", "training", "environment"):
        assert key in manifest, key
    assert manifest["command"].startswith("python experiments/train_shipped_adapters.py")


def test_the_warm_start_passed_its_gate() -> None:
    gate = json.loads((ADAPTERS_DIR / WARM_START / "manifest.json").read_text())["held_out_gate"]
    assert gate["passed"] and all(gate["checks"].values())
    assert gate["auctions"] >= 200


def test_unknown_adapter_names_the_fix(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="train_shipped_adapters"):
        resolve_adapter("no-such-adapter")
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        resolve_adapter(str(tmp_path))


@pytest.mark.slow
def test_the_warm_start_loads_on_the_embedded_model() -> None:
    from llmauction_sim.config import ModelConfig
    from llmauction_sim.lm.registry import load_language_model

    lm = load_language_model(ModelConfig(adapter=WARM_START))
    base = load_language_model(ModelConfig())
    assert not hasattr(lm.model, "peft_config")  # merged for generation
    weights = dict(lm.model.named_parameters())
    changed = [n for n, p in base.model.named_parameters() if not (p == weights[n]).all()]
    assert any("q_proj" in n for n in changed) and any("down_proj" in n for n in changed)
