"""Transformers backend: batched sampling and scoring on any causal LM with a chat template.

The decode loop is our own rather than ``model.generate`` because the protocol needs per-prompt
sampling parameters and seeds in one batch, and because it lets us (1) prefill the prompt prefix
shared by a batch (the Ad-LLM's system prompt) once and keep ONE copy of its keys/values that every
row attends to (cascade attention), (2) prefill each distinct prompt once however many samples it
has, (3) write keys/values into preallocated buffers instead of concatenating every step, and
(4) drop finished rows from the batch. The caches are in `kv_cache`, the shared-prefix attention in
`cascade_attention` and the per-row sampler in `sampling`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from llmauction_sim.lm.base import (
    Chat,
    Completion,
    SamplingParams,
    encode_chat,
    expand_params,
    sample_seeds,
)
from llmauction_sim.lm.cascade_attention import CASCADE
from llmauction_sim.lm.cpu_kernels import fast_cpu_inference, is_attention_module
from llmauction_sim.lm.devices import resolve_device, resolve_dtype
from llmauction_sim.lm.kv_cache import RowWindow, compaction_order, new_cache
from llmauction_sim.lm.registry import resolve_adapter, resolve_model
from llmauction_sim.lm.sampling import logit_bias_matrix, proposal_logprobs, sample_tokens

MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefix pass is not worth it


@dataclass
class _Row:
    prompt: int  # index into the unique prompts
    sample: int
    params: SamplingParams
    seed: int


class TransformersLM:
    """`LanguageModel` over a Hugging Face causal LM (optionally with a PEFT adapter)."""

    def __init__(self, model, tokenizer, name: str = "model", max_batch_size: int = 64,
                 seed: int = 0, prefill_rows: int = 8, cpu_kernels: bool = True):
        self.model = model.eval()
        self.cpu_kernels = cpu_kernels
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.rng = np.random.default_rng(seed)
        self.device = next(model.parameters()).device
        text_config = model.config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.kv_heads = text_config.num_key_value_heads
        self.head_dim = getattr(text_config, "head_dim", None) or \
            text_config.hidden_size // text_config.num_attention_heads
        self.cache_dtype = model.get_input_embeddings().weight.dtype
        self.prefill_rows = prefill_rows
        self.attention = self._use_cascade_attention()
        stop = {tokenizer.eos_token_id}
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            stop.add(im_end)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None
                    else [])
        self._stop_id_set = {i for i in stop if i is not None}
        self.stop_ids = torch.tensor(sorted(self._stop_id_set), device=self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        self._stop_masks: dict[tuple[str, ...], torch.Tensor] = {}

    def _use_cascade_attention(self) -> dict[int, torch.nn.Module]:
        """Switch an SDPA model to `cascade_attention`; its attention modules by layer index.

        Other implementations (flash attention on a GPU, ...) are kept; the shared prefix is then
        copied into every row instead.
        """
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(base.config, "_attn_implementation", None) not in ("sdpa", CASCADE):
            return {}
        modules = {m.layer_idx: m for m in base.modules() if is_attention_module(m)}
        if len(modules) != self.num_layers:
            return {}
        base.set_attn_implementation(CASCADE)
        return modules

    def _share_prefix(self, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        for i, module in self.attention.items():
            module.shared_prefix_kv = prefix_kv[i] if prefix_kv is not None else None

    def stop_string_mask(self, stop: tuple[str, ...]) -> torch.Tensor:
        """[vocab] bool: tokens whose text contains any of the stop strings (cached per tuple)."""
        if stop not in self._stop_masks:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            mask = torch.zeros(vocab, dtype=torch.bool)
            for i in range(min(vocab, len(self.tokenizer)) if stop else 0):
                piece = self.tokenizer.decode([i])
                mask[i] = any(x in piece for x in stop)
            self._stop_masks[stop] = mask.to(self.device)
        return self._stop_masks[stop]

    # ------------------------------------------------------------------------------------------
    # prompts
    # ------------------------------------------------------------------------------------------
    def encode_chat(self, chat: Chat) -> list[int]:
        return encode_chat(self.tokenizer, chat)

    # ------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Chat],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        params = expand_params(params, len(prompts))
        seeds = sample_seeds(params, self.rng)
        encoded = [self.encode_chat(p) for p in prompts]
        rows = [_Row(i, j, params[i], seeds[i][j]) for i in range(len(prompts))
                for j in range(params[i].n)]
        out: list[list[Completion | None]] = [[None] * p.n for p in params]
        # Length bucketing: similar prompt lengths share a batch, so little padding is computed.
        rows.sort(key=lambda r: (len(encoded[r.prompt]), r.prompt, r.sample))
        with fast_cpu_inference(self.model, self.cpu_kernels):
            for start in range(0, len(rows), self.max_batch_size):
                batch = rows[start:start + self.max_batch_size]
                for row, completion in zip(batch, self._generate_batch(batch, encoded)):
                    out[row.prompt][row.sample] = completion
        return out  # type: ignore[return-value]

    def _prefill(self, prompt_ids: list[list[int]], max_new: int):
        """Run the prompts, one row each; return (cache, last logits, attention mask, next pos).

        With cascade attention the shared prefix's keys/values are kept once (attached to the
        attention modules until `_share_prefix(None)`) and the cache and mask cover only each
        row's tokens after it.
        """
        lengths = [len(p) for p in prompt_ids]
        n = len(prompt_ids)
        shared = common_prefix_len(prompt_ids) if n > 1 else 0
        shared = min(shared, min(lengths) - 1)
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        cascade = bool(shared and self.attention)
        cached = shared if cascade else 0  # prefix positions not stored in the rows' cache
        cache = new_cache(self.num_layers, max(lengths) - cached + max_new)
        for layer in cache.layers:
            layer.allocate(n, self.kv_heads, self.head_dim, self.cache_dtype, self.device)
        if shared:
            prefix = torch.tensor([prompt_ids[0][:shared]], device=self.device)
            pre = DynamicCache()
            self.model(input_ids=prefix, cache=pre, use_cache=True, logits_to_keep=1)
            if cascade:
                self._share_prefix([(src.keys, src.values) for src in pre.layers])
            else:
                for layer, src in zip(cache.layers, pre.layers):
                    layer.load_prefix(src.keys, src.values)
        suffixes = [p[shared:] for p in prompt_ids]
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, s in enumerate(suffixes):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, shared + width - len(s):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, shared:]
        mask = mask[:, cached:]
        # A few rows at a time: the activations then stay in the CPU's caches (measured 1.45x
        # faster than one 64-row pass on 2 cores); the rows share one preallocated cache. Each
        # window computes only its own width (prompts arrive sorted by length).
        logits = []
        for start in range(0, n, self.prefill_rows):
            rows = slice(start, start + self.prefill_rows)
            skip = width - max(len(s) for s in suffixes[rows])
            window = DynamicCache()
            window.layers = [RowWindow(layer, rows, skip) for layer in cache.layers]
            logits.append(self.model(input_ids=ids[rows, skip:], attention_mask=mask[rows],
                                     position_ids=positions[rows, skip:], cache=window,
                                     use_cache=True, logits_to_keep=1).logits[:, -1])
        for layer in cache.layers:
            layer.advance(width)
        next_pos = torch.tensor(lengths, device=self.device)
        return cache, torch.cat(logits), mask, next_pos

    def _generate_batch(self, batch: list[_Row], encoded: list[list[int]]) -> list[Completion]:
        uniq = sorted({r.prompt for r in batch}, key=lambda p: (len(encoded[p]), p))
        where = {p: i for i, p in enumerate(uniq)}
        prompt_ids = [encoded[p] for p in uniq]
        max_new = max(r.params.max_new_tokens for r in batch)
        try:
            return self._decode(batch, where, *self._prefill(prompt_ids, max_new), max_new)
        finally:
            self._share_prefix(None)

    def _decode(self, batch: list[_Row], where: dict[int, int], cache, logits, mask, next_pos,
                max_new: int) -> list[Completion]:
        # Each distinct prompt was run once; repeat its state for each of its samples.
        idx = torch.tensor([where[r.prompt] for r in batch], device=self.device)
        if len(where) != len(batch) or not torch.equal(idx, torch.arange(len(batch))):
            cache.batch_select_indices(idx)
            logits, mask, next_pos = logits[idx], mask[idx], next_pos[idx]

        b = len(batch)
        temps = torch.tensor([r.params.temperature for r in batch], device=self.device)
        top_p = torch.tensor([r.params.top_p for r in batch], device=self.device)
        top_k = torch.tensor([r.params.top_k for r in batch], device=self.device)
        limit = torch.tensor([r.params.max_new_tokens for r in batch], device=self.device)
        seeds = torch.tensor([r.seed for r in batch], dtype=torch.long, device=self.device)
        stop_sets = sorted({r.params.stop for r in batch})
        stop_masks = torch.stack([self.stop_string_mask(x) for x in stop_sets])
        stop_set = torch.tensor([stop_sets.index(r.params.stop) for r in batch],
                                device=self.device)
        tokens = torch.full((b, max_new), self.pad_id, dtype=torch.long, device=self.device)
        count = torch.zeros(b, dtype=torch.long, device=self.device)
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        alive = torch.arange(b, device=self.device)  # original row of each live batch position

        # Finished rows stay in the batch (their tokens are ignored) until an eighth of it is
        # finished; dropping them then moves the last live rows' caches into the freed slots.
        active = torch.ones(b, dtype=torch.bool, device=self.device)
        bias = logit_bias_matrix([r.params for r in batch], logits.shape[-1], self.device)
        for step in range(max_new):
            step_logits = logits.float() if bias is None else logits.float() + bias[alive]
            nxt = sample_tokens(step_logits, temps[alive], top_k[alive], top_p[alive],
                                seeds[alive], step)
            live = active[alive]
            rows = alive[live]
            tokens[rows, step] = nxt[live]
            count[rows] += 1
            ended = torch.isin(nxt, self.stop_ids) | stop_masks[stop_set[alive], nxt]
            finished[alive[ended & live]] = True
            active[alive[(ended | (count[alive] >= limit[alive])) & live]] = False
            live = active[alive]
            if not bool(live.any()):
                break
            if int((~live).sum()) * 8 >= len(alive):
                keep = compaction_order(live)
                cache.batch_select_indices(keep)
                alive, nxt, mask, next_pos = alive[keep], nxt[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            logits = self.model(input_ids=nxt[:, None], attention_mask=mask,
                                position_ids=next_pos[:, None], cache=cache,
                                use_cache=True).logits[:, -1]
            next_pos = next_pos + 1

        results = []
        for i in range(b):
            ids = tokens[i, :count[i]].tolist()
            if ids and ids[-1] in self._stop_id_set:
                ids = ids[:-1]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cuts = [text.find(x) + len(x) for x in batch[i].params.stop if x in text]
            text = text[:min(cuts)] if cuts else text
            text = text.strip()
            results.append(Completion(text=text, num_tokens=int(count[i]),
                                      finished=bool(finished[i]), token_ids=tuple(ids)))
        return results

    # ------------------------------------------------------------------------------------------
    # scoring
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, prompts: Sequence[Chat], continuations: Sequence[str],
              params: SamplingParams | None = None) -> np.ndarray:
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} "
                             "continuations; pass one continuation per prompt")
        pairs = []
        for chat, cont in zip(prompts, continuations):
            p = self.encode_chat(chat)
            c = self.tokenizer(cont, add_special_tokens=False)["input_ids"]
            pairs.append((p, c))
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        with fast_cpu_inference(self.model, self.cpu_kernels):
            return self._score_sorted(pairs, order, params)

    @torch.inference_mode()
    def score_options(self, prompts: Sequence[Chat], options: Sequence[Sequence[str]],
                      rows_per_batch: int = 16) -> list[np.ndarray]:
        """log p(option | prompt) for every option of every prompt (a prompt whose last message
        is the assistant's is continued). Each prompt runs once; its options run as a batch on
        copies of its cache, so K options cost one prompt instead of K (the choice probe and the
        tilted decoder score every candidate at one point of one answer)."""
        encoded = [self.encode_chat(p) for p in prompts]
        tails = [[self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts]
                 for opts in options]
        out = [np.zeros(len(opts)) for opts in options]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        with fast_cpu_inference(self.model, self.cpu_kernels):
            for start in range(0, len(order), rows_per_batch):
                rows = [i for i in order[start:start + rows_per_batch] if tails[i]]
                if rows:
                    values, _ = self._score_option_rows([encoded[i] for i in rows],
                                                        [tails[i] for i in rows])
                    for i, v in zip(rows, values):
                        out[i] = v
        return out

    @torch.inference_mode()
    def score_samples(self, prompts: Sequence[Chat], samples: Sequence[Sequence[str]],
                      params: SamplingParams | None = None
                      ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """`score` of several answers to each prompt (MOSAIC's M samples): each prompt runs once
        and its answers on copies of its cache, and one pass gives both log p under the model and,
        with `params`, log q under the sampling distribution. Returns (log p, log q or None), one
        array per prompt in answer order."""
        if len(prompts) != len(samples):
            raise ValueError(f"score_samples got {len(prompts)} prompts but {len(samples)} lists "
                             "of answers; pass one list per prompt")
        encoded = [self.encode_chat(p) for p in prompts]
        tails = [[self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in answers]
                 for answers in samples]
        ref = [np.zeros(len(t)) for t in tails]
        prop = [np.zeros(len(t)) for t in tails] if params is not None else None
        order = [i for i in sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
                 if any(tails[i])]
        batches, rows = [[]], 0
        for i in order:  # whole prompts, about max_batch_size answers per forward pass
            if batches[-1] and rows + len(tails[i]) > self.max_batch_size:
                batches.append([])
                rows = 0
            batches[-1].append(i)
            rows += len(tails[i])
        with fast_cpu_inference(self.model, self.cpu_kernels):
            for batch in filter(None, batches):
                values, proposal = self._score_option_rows([encoded[i] for i in batch],
                                                           [tails[i] for i in batch], params)
                for k, i in enumerate(batch):
                    ref[i] = values[k]
                    if prop is not None:
                        prop[i] = proposal[k]
        return ref, prop

    def _padded(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids padded to the longest row (on the left or the right) and their mask."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _score_option_rows(self, prompts: list[list[int]], tails: list[list[list[int]]],
                           params: SamplingParams | None = None
                           ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """(log p, log q under `params` or None) of every tail of every prompt: the prompts run
        once, their tails on copies of the prompt cache."""
        ids, mask = self._padded(prompts, left=True)
        cache = DynamicCache()
        first = self.model(input_ids=ids, attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp_min(0), cache=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float()
        owner = torch.tensor([r for r, opts in enumerate(tails) for _ in opts],
                             device=self.device)
        flat = [t for opts in tails for t in opts]
        cache.batch_select_indices(owner)
        opt_ids, opt_mask = self._padded(flat, left=False)
        t_max = opt_ids.shape[1]
        lengths = mask.sum(-1)[owner]
        logits = self.model(input_ids=opt_ids, attention_mask=torch.cat([mask[owner], opt_mask],
                                                                        -1),
                            position_ids=lengths[:, None] + torch.arange(t_max,
                                                                         device=self.device),
                            cache=cache, use_cache=True).logits.float()
        logits = torch.cat([first[owner, None], logits[:, :-1]], 1)
        token_lp = torch.log_softmax(logits, -1).gather(-1, opt_ids[..., None]).squeeze(-1)

        def per_prompt(values: torch.Tensor) -> list[np.ndarray]:
            values = values.sum(-1).cpu().numpy().astype(np.float64)
            out, k = [], 0
            for opts in tails:
                out.append(values[k:k + len(opts)])
                k += len(opts)
            return out

        ref = per_prompt(token_lp * opt_mask)
        if params is None:
            return ref, None
        bias = logit_bias_matrix([params], logits.shape[-1], self.device)
        q = proposal_logprobs(logits if bias is None else logits + bias, opt_ids, params)
        return ref, per_prompt(torch.where(opt_mask.bool(), q, torch.zeros_like(q)))

    def _score_sorted(self, pairs, order, params) -> np.ndarray:
        result = np.zeros(len(pairs))
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
            width = max(len(s) for s in seqs)
            cmax = max(len(pairs[i][1]) for i in chunk)
            if cmax == 0:
                continue
            ids, mask = self._padded(seqs, left=True)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            # Left padding puts every continuation at the right edge: only those logits are needed.
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=cmax + 1).logits[:, :-1].float()
            targets = ids[:, width - cmax:]
            if params is None:
                token_lp = torch.log_softmax(logits, dim=-1).gather(
                    -1, targets[..., None]).squeeze(-1)
            else:
                bias = logit_bias_matrix([params], logits.shape[-1], self.device)
                token_lp = proposal_logprobs(logits if bias is None else logits + bias, targets,
                                             params)
            for r, i in enumerate(chunk):
                c = len(pairs[i][1])
                result[i] = float(token_lp[r, cmax - c:].sum()) if c else 0.0
        return result


def common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def load_pretrained(name: str, dtype: str, device: str, adapter: str | None):
    """(model, tokenizer), with the adapter (a packaged name or folder) merged into the weights:
    the model it makes is the policy, for generation and as the start of any training."""
    path = resolve_model(name)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ValueError(f"model {name!r} has no chat template; use an instruct/chat model")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(dev)
    if adapter:
        model = PeftModel.from_pretrained(model, str(resolve_adapter(adapter))).merge_and_unload()
    return model, tokenizer


def load_trainable(config):
    """(model, tokenizer) of a `ModelConfig`, loaded afresh: training changes a model in place, so
    it must not be the copy `load_language_model` shares."""
    return load_pretrained.__wrapped__(config.name, config.dtype, config.device, config.adapter)


def load_transformers_model(config, seed: int = 0, run_config=None) -> TransformersLM:
    """The transformers backend's `LanguageModel` for a `ModelConfig`; weights are shared between
    equal configs. `run_config` is not needed here (the vLLM backend sizes its engine by it)."""
    model, tokenizer = load_pretrained(config.name, config.dtype, config.device, config.adapter)
    return TransformersLM(model, tokenizer, name=config.name,
                          max_batch_size=config.max_batch_size, seed=seed,
                          cpu_kernels=config.cpu_kernels)
