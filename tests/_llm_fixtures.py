"""Language-model fixtures for the editing tests: the real SmolLM2 (loaded once per session, through the
safetensors cache in ``<repo>/.cache/lifelong``) and tiny randomly initialised Llamas saved as HF folders
(for store, crash and CLI tests where only the plumbing matters)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "lifelong"
os.environ.setdefault("LIFELONG_CACHE", str(CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY_SOLA = ["--set", "layers=[1]", "--set", "modules=[mlp.down_proj]", "--set", "max_steps=30", "--set", "lr=0.05"]


def make_tiny_llama(folder: Path, *, seed: int = 0, max_positions: int = 64) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer, saved as an HF folder (a few MB, loads in < 1 s)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lifelong.adapters.lm.model_loading import load_tokenizer

    tok = load_tokenizer()  # the tokenizer of the default model (from the weight cache when present)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm():
    """``(model, tokenizer)`` of the default model, shared by the whole test session (never edited in place:
    every editor detaches itself when its session closes)."""
    from lifelong.adapters.lm.model_loading import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_other(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-b") / "model", seed=1)
