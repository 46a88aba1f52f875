"""Tiny random llama models with the embedded model's real tokenizer and chat template, for fast
tests of everything that runs a language model (built from a config, as TRL's tests do)."""

from __future__ import annotations

import functools

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmauction_sim.lm import registry


@functools.lru_cache(maxsize=1)
def embedded_tokenizer():
    return AutoTokenizer.from_pretrained(registry.resolve_model(registry.EMBEDDED_MODEL))


def tiny_llama(tokenizer=None, *, hidden: int = 64, intermediate: int = 128, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, max_positions: int = 2048,
               seed: int = 0) -> LlamaForCausalLM:
    tokenizer = tokenizer if tokenizer is not None else embedded_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        # Untied on purpose: with tied embeddings a random model's greedy choice is the last input
        # token ("\n" after the chat template's assistant header), so every text would be empty.
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).to(torch.float32).eval()
