"""The IRPO loop end to end on a tiny random llama: artefacts, and resume after an interrupted phase."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from tiny_models import embedded_tokenizer, tiny_llama

import llmauction_sim.learning.irpo as irpo
from llmauction_sim.clicks.base import ClickDecision
from llmauction_sim.config import RunConfig
from llmauction_sim.data import build_dataset
from llmauction_sim.lm.hf import TransformersLM


class KeywordEncoder:
    """A fast stand-in sentence encoder for the pCTR model (a fixed vector per text)."""

    name = "irpo-test-encoder"
    dim = 8

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            out[i] = np.random.default_rng(seed).normal(0, 1, self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class ScriptedJudge:
    """Clicks the first exposed ad of a response with probability one half."""

    name = "scripted"

    def judge(self, requests, rng):
        out = []
        for r in requests:
            ids = [ad.id for ad in r.exposed]
            clicked = tuple(ids[:1]) if ids and rng.random() < 0.5 else ()
            out.append(ClickDecision(clicked, {i: 0.5 for i in ids}))
        return out


class MentioningLM(TransformersLM):
    """The tiny policy's samples, with a valid mention of the first candidate appended to every
    other one (a random model writes none), so clicks, rewards and pairs exist."""

    def generate(self, prompts, params):
        result = super().generate(prompts, params)
        for prompt, row in zip(prompts, result):
            lines = [x for x in prompt[-1]["content"].splitlines() if x.startswith("@")]
            if not lines:  # a prompt without ads (the warm start's plain questions)
                continue
            mention = lines[0].split(" | ")[0]  # the first candidate's line
            for k in range(0, len(row), 2):
                row[k] = dataclasses.replace(row[k], text=f"{row[k].text} {mention}")
        return result


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("irpo-data")
    build_dataset(RunConfig().with_overrides(["data.profiles=6", "data.query_writer=template"]),
                  folder, progress=False)
    return folder


CONFIG = RunConfig().with_overrides([
    "irpo.epochs=1", "irpo.samples_per_query=4", "irpo.candidates_per_prompt=4",
    "irpo.train_queries=4", "irpo.test_queries=2", "ad_sampling.max_new_tokens=8",
    "pctr.epochs=2", "dpo.max_steps=2", "dpo.batch_size=2", "dpo.learning_rate=1e-3",
    "dpo.max_length=512", "warmstart.queries=0"])


def resources(tokenizer):
    return {"model": tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2,
                                kv_heads=1), "tokenizer": tokenizer, "judge": ScriptedJudge(),
            "pctr_encoder": KeywordEncoder(),
            "make_lm": lambda m, tok: MentioningLM(m, tok, name="tiny", seed=0)}


def test_one_epoch_writes_every_artifact(tmp_path, data, tokenizer) -> None:
    table = irpo.run_irpo(CONFIG.with_overrides(["irpo.max_pairs=3"]), tmp_path, data=data,
                          progress=False, **resources(tokenizer))
    assert list(table["epoch"]) == [0, 1]
    for col in ("revenue_per_query", "reward_per_query", "ctr", "format_error_rate", "pctr_auc",
                "dpo_loss", "dpo_reward_accuracy", "pairs", "kl_to_reference", "seconds"):
        assert col in table.columns
    assert table.set_index("epoch").loc[1, "kl_to_reference"] > 0  # DPO moved the policy
    epoch = tmp_path / "epoch-1"
    log = pd.read_parquet(epoch / "clicks.parquet")
    assert {"user_id", "ad_id", "query", "response", "clicked", "bid"} <= set(log.columns)
    assert 0 < log["clicked"].sum() < len(log)
    pctr = json.loads((epoch / "pctr.json").read_text())
    assert (epoch / "pctr" / "pctr_model.pt").is_file() or pctr["skipped"]
    samples = pd.read_parquet(epoch / "samples.parquet")
    assert len(samples) == 4 * 4
    assert (epoch / "pairs" / "dataset_info.json").is_file()
    dpo = json.loads((epoch / "dpo.json").read_text())
    assert dpo["pairs"] > 0 and (epoch / "adapter" / "adapter_config.json").is_file()
    stats = json.loads((epoch / "pairs.json").read_text())
    assert stats["kept"] == dpo["pairs"] == min(3, stats["built"]) and stats["built"] > 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["epoch"] for r in summary["held_out"]] == [0, 1]
    assert summary["policy"]["adapter"].endswith("epoch-1/adapter")
    assert irpo.resolve_policy(tmp_path) == summary["policy"]
    row = table.set_index("epoch").loc[1]
    assert row["pairs"] == dpo["pairs"] and np.isfinite(row["dpo_loss"])
    assert (tmp_path / "epoch-0" / "eval" / "summary.json").is_file()
    assert (epoch / "eval" / "summary.json").is_file()
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["phase"]) == (1, "evaluate")
    with pytest.raises(FileExistsError):
        irpo.run_irpo(CONFIG, tmp_path, data=data, progress=False, **resources(tokenizer))


def test_resume_after_interrupted_phase(tmp_path, data, tokenizer, monkeypatch) -> None:
    real_sample = irpo.sample_phase

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(irpo, "sample_phase", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        irpo.run_irpo(CONFIG, tmp_path, data=data, progress=False, **resources(tokenizer))
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["phase"]) == (1, "pctr")
    log_before = (tmp_path / "epoch-1" / "clicks.parquet").stat().st_mtime_ns

    monkeypatch.setattr(irpo, "sample_phase", real_sample)
    for done in ("collect_phase", "pctr_phase"):
        monkeypatch.setattr(irpo, done, broken)
    real_eval, evaluated = irpo.evaluate_phase, []

    def counting_eval(run, t, seconds):
        evaluated.append(t)
        return real_eval(run, t, seconds)

    monkeypatch.setattr(irpo, "evaluate_phase", counting_eval)
    table = irpo.run_irpo(CONFIG, tmp_path, data=data, resume=True, progress=False,
                          **resources(tokenizer))
    assert evaluated == [1]  # epoch 0's evaluation was not redone
    assert list(table["epoch"]) == [0, 1]
    assert (tmp_path / "epoch-1" / "clicks.parquet").stat().st_mtime_ns == log_before
    assert (tmp_path / "epoch-1" / "adapter" / "adapter_config.json").is_file()
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["phase"]) == (1, "evaluate")


def test_resume_after_dpo_restores_the_trained_policy(tmp_path, data, tokenizer,
                                                      monkeypatch) -> None:
    real_eval = irpo.evaluate_phase

    def eval_once(run, t, seconds):
        if t == 1:
            raise RuntimeError("interrupted")
        return real_eval(run, t, seconds)

    monkeypatch.setattr(irpo, "evaluate_phase", eval_once)
    with pytest.raises(RuntimeError, match="interrupted"):
        irpo.run_irpo(CONFIG, tmp_path, data=data, progress=False, **resources(tokenizer))
    assert json.loads((tmp_path / "state.json").read_text())["phase"] == "dpo"

    policies = []

    def check_policy(run, t, seconds):
        policies.append(run.model)
        return real_eval(run, t, seconds)

    monkeypatch.setattr(irpo, "evaluate_phase", check_policy)
    for name in ("collect_phase", "pctr_phase", "sample_phase", "pairs_phase", "dpo_phase"):
        monkeypatch.setattr(irpo, name, lambda *a, **k: pytest.fail("recomputed a done phase"))
    table = irpo.run_irpo(CONFIG, tmp_path, data=data, resume=True, progress=False,
                          **resources(tokenizer))
    from peft import PeftModel

    assert len(policies) == 1 and isinstance(policies[0], PeftModel)
    assert list(table["epoch"]) == [0, 1]
    assert table.set_index("epoch").loc[1, "pairs"] > 0


class NeverClicks:
    name = "never"

    def judge(self, requests, rng):
        return [ClickDecision((), {ad.id: 0.0 for ad in r.exposed}) for r in requests]


def test_no_clicks_skips_pctr_and_no_pairs_skips_dpo(tmp_path, data, tokenizer) -> None:
    res = {**resources(tokenizer), "judge": NeverClicks()}
    table = irpo.run_irpo(CONFIG, tmp_path, data=data, progress=False, **res)
    pctr = json.loads((tmp_path / "epoch-1" / "pctr.json").read_text())
    assert pctr["skipped"] and "no clicks" in pctr["note"]
    samples = pd.read_parquet(tmp_path / "epoch-1" / "samples.parquet")
    assert set(samples["reward_kind"]) == {"oracle"}
    # Without clicks every answer's reward is minus its format penalty (5 per ad): no gap > 10.
    dpo = json.loads((tmp_path / "epoch-1" / "dpo.json").read_text())
    assert dpo["skipped"] and not (tmp_path / "epoch-1" / "adapter").exists()
    row = table.set_index("epoch").loc[1]
    assert "oracle" in row["notes"] and "DPO skipped" in row["notes"]
    assert row["pairs"] == 0 and row["seconds"] > 0


WARM = CONFIG.with_overrides(["warmstart.queries=4", "warmstart.epochs=1",
                              "warmstart.learning_rate=1e-2", "warmstart.batch_size=2",
                              "warmstart.no_ad_rate=0"])


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_warm_start_runs_before_epoch_0_and_resume_restores_it(tmp_path, data, tokenizer,
                                                               monkeypatch) -> None:
    res = resources(tokenizer)
    base = _weights(res["model"])

    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted")

    real_collect = irpo.collect_phase
    monkeypatch.setattr(irpo, "collect_phase", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        irpo.run_irpo(WARM, tmp_path, data=data, progress=False, **res)
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["phase"]) == (0, "evaluate")
    info = json.loads((tmp_path / "epoch-0" / "warmstart.json").read_text())
    assert info["metrics"]["examples"] == 4 and info["metrics"]["steps"] >= 1
    assert set(info["gate"]["checks"]) == {"mention_rate", "format_errors", "early_mentions",
                                           "bid_blind"}
    assert (tmp_path / "epoch-0" / "warmstart" / "adapter_config.json").is_file()
    examples = pd.read_parquet(tmp_path / "epoch-0" / "warmstart.parquet")
    assert len(examples) == 4 and all(len(ids) == 1 for ids in examples["inserted"])
    warm = _weights(res["model"])  # merged in place: the starting policy of epoch 1
    assert any(not np.allclose(base[k], warm[k]) for k in base)

    fresh = resources(tokenizer)  # a new process: base weights, warm start restored from disk
    seen = []

    def check_collect(run, t):
        seen.append(_weights(run.model))
        return real_collect(run, t)

    monkeypatch.setattr(irpo, "collect_phase", check_collect)
    monkeypatch.setattr(irpo, "warmstart_phase", lambda *a: pytest.fail("warm start rerun"))
    table = irpo.run_irpo(WARM, tmp_path, data=data, resume=True, progress=False, **fresh)
    assert list(table["epoch"]) == [0, 1]
    assert all(np.allclose(seen[0][k], warm[k], atol=1e-6) for k in warm)


def test_restore_places_policy_and_reference_on_the_configured_device(tmp_path, tokenizer,
                                                                      monkeypatch) -> None:
    """A full fine-tuned policy is reloaded from its folder in ad_llm's dtype and moved, with the
    reference, to ad_llm's device (recorded: no GPU is needed to check the request)."""
    import torch
    from transformers import AutoModelForCausalLM

    saved = tmp_path / "epoch-1" / "adapter"
    tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2,
               kv_heads=1).save_pretrained(str(saved))
    (tmp_path / "epoch-1" / "dpo.json").write_text(json.dumps({"adapter": "epoch-1/adapter"}))
    moves, loads = [], []
    real_load = AutoModelForCausalLM.from_pretrained

    def record_to(model, label):
        def to(*args, **kwargs):
            moves.append((label, args, kwargs))
            return model
        model.to = to
        return model

    def load(path, **kwargs):
        loads.append(kwargs)
        return record_to(real_load(path, **kwargs), "policy")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load)
    config = CONFIG.with_overrides(["dpo.lora=false", "ad_llm.device=cuda:1",
                                    "ad_llm.dtype=bfloat16"])
    base = record_to(tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2,
                                kv_heads=1), "reference")
    wrapped = []
    run = irpo.IrpoRun(config, tmp_path, tmp_path, [], None, None, None, tokenizer, base, None,
                       lambda m, tok: wrapped.append(m) or m, base_model=base, progress=False)
    irpo.restore_policy(run, 1)
    assert loads == [{"dtype": torch.bfloat16}]
    assert run.model.dtype == torch.bfloat16 and run.model is not base
    assert ("policy", (torch.device("cuda:1"),), {}) in moves
    assert ("reference", (torch.device("cuda:1"),), {}) in moves
    assert wrapped == [run.model]  # the generator wraps the placed policy


class FakeEngine:
    """Stands in for a vLLM engine over a folder: loads the weights saved there, records what it
    is asked, and reads the folder again on `reload_weights`."""

    def __init__(self, folder, events):
        self.folder, self.events = folder, events
        events.append(("start", str(folder)))
        self._load()

    def _load(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.folder))
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype="float32")
        self.lm = MentioningLM(model.eval(), tok, name="engine", seed=0)

    def generate(self, prompts, params):
        self.events.append(("generate", len(prompts)))
        return self.lm.generate(prompts, params)

    def score(self, prompts, continuations, params=None):
        return self.lm.score(prompts, continuations, params)

    def reload_weights(self):
        self.events.append(("reload",))
        self._load()


def test_vllm_backend_samples_on_the_engine_and_reloads_after_dpo(tmp_path, data, tokenizer,
                                                                  monkeypatch) -> None:
    import torch

    from llmauction_sim.learning.policy_engine import EnginePolicy

    events, engines = [], []

    def start(folder):
        engines.append(FakeEngine(folder, events))
        return engines[-1]

    hf_wraps = []
    monkeypatch.setattr("llmauction_sim.lm.hf.TransformersLM",
                        lambda *a, **k: hf_wraps.append(a))
    phases = []
    for name in ("collect_phase", "sample_phase", "dpo_phase"):
        real = getattr(irpo, name)

        def tagged(*args, _real=real, _name=name, **kwargs):
            events.append(("phase", _name))
            return _real(*args, **kwargs)

        monkeypatch.setattr(irpo, name, tagged)
    res = {k: v for k, v in resources(tokenizer).items() if k != "make_lm"}
    config = CONFIG.with_overrides(["ad_llm.backend=vllm"])
    run = irpo.open_irpo(config, tmp_path, data=data, progress=False, start_engine=start, **res)
    try:
        assert isinstance(run.make_lm, EnginePolicy) and run.lm is engines[0]
        irpo.advance(run, 1)
        phases = [e[1] for e in events if e[0] == "phase"]
        assert phases == ["collect_phase", "sample_phase", "dpo_phase"]
        # One engine, started over OUT/policy-engine; collect and sample generate on it; the
        # weights are reloaded after the DPO phase.
        assert len(engines) == 1 and events[0] == ("start", str(tmp_path / "policy-engine"))
        cut = events.index(("phase", "dpo_phase"))
        assert ("generate", 4) in events[events.index(("phase", "collect_phase")):cut]
        assert ("generate", 4) in events[events.index(("phase", "sample_phase")):cut]
        assert events[cut + 1:].count(("reload",)) == 1 and run.make_lm.reloads == 1
        assert not hf_wraps
        # The engine now holds the trained policy (LoRA merged): same logits.
        ids = torch.tensor([tokenizer("Which tent for two?")["input_ids"]])
        with torch.no_grad():
            want = run.model(input_ids=ids).logits
            got = engines[0].lm.model(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        with torch.no_grad(), run.model.disable_adapter():
            before = run.model(input_ids=ids).logits
        assert not torch.allclose(got, before, atol=1e-4)  # DPO moved the policy
    finally:
        run.close()
