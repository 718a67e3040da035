"""A sentence classifier on a BERT-family encoder (the offline all-MiniLM-L6-v2), saved as a run folder the edit
commands load like a language model (``lifelong edit apply|eval|bench --model runs/gloss-clf``).

The model is the encoder, mean pooling over the attention mask, L2 normalisation (as the sentence encoder was
trained) and one linear layer to the classes. ``train_text_classifier`` trains the linear head on the frozen
encoder's embeddings (full-batch Adam on cross-entropy); the encoder is not fine-tuned, which keeps training to
the cost of encoding the training texts once (a few minutes on 2 CPU cores). The editors then change the
encoder's layers (SoLA's LoRA, GRACE's codebook, FT-L's weight), like SoLA's document-classification setting
edits a BERT classifier.

A folder holds ``model.safetensors`` (encoder and head), ``config.json`` (the encoder's BERT config), the
tokenizer files and ``classifier.json`` (class names, pooling, maximum length, the training record and the
per-editor layer settings ``editor_defaults``). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lifelong.adapters.lm.encoder_files import encoder_path
from lifelong.platform.atomic import atomic_folder, atomic_write_text
from lifelong.platform.errors import UserError
from lifelong.platform.quiet import quiet_loading_bars

CLASSIFIER_FILE = "classifier.json"
FORMAT = 1


@dataclass
class ClassifierOutput:
    """What ``TextClassifier.forward`` returns: ``logits`` (batch, classes)."""

    logits: torch.Tensor


class TextClassifier(nn.Module):
    """BERT-family encoder + mean pooling + L2 normalisation + a linear head over named classes."""

    is_text_classifier = True

    def __init__(self, encoder: nn.Module, class_names: Sequence[str], *, max_length: int = 128,
                 editor_defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, len(class_names))
        self.config = encoder.config
        self.class_names = list(class_names)
        self.class_index = {c: i for i, c in enumerate(self.class_names)}
        self.max_length = int(max_length)
        self.editor_defaults = dict(editor_defaults or {})

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised sentence embedding (mean over the unmasked tokens of the last layer)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
                ) -> ClassifierOutput:
        return ClassifierOutput(self.head(self.embed(input_ids, attention_mask).to(self.head.weight.dtype)))


def _base_encoder(name: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path(name)
    with quiet_loading_bars():
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def embed_texts(model: TextClassifier, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Normalised embeddings of ``texts`` (float32, (n, d)), in batches without gradients."""
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[s : s + batch_size]), padding=True, truncation=True,
                            max_length=model.max_length, return_tensors="pt").to(next(model.parameters()).device)
            out.append(model.embed(enc.input_ids, enc.attention_mask).cpu().numpy())
    d = model.config.hidden_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, d), np.float32)


def train_text_classifier(train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], class_names: Sequence[str],
                          *, encoder: str = "all-minilm-l6-v2", epochs: int = 300, lr: float = 0.05, seed: int = 0,
                          max_length: int = 128, log: Any = None) -> tuple[TextClassifier, Any, dict[str, Any]]:
    """Train the head on the frozen encoder; returns ``(model, tokenizer, record)`` with train and test accuracy."""
    torch.manual_seed(seed)
    enc_model, tok = _base_encoder(encoder)
    model = TextClassifier(enc_model, class_names, max_length=max_length)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    x_tr = torch.from_numpy(embed_texts(model, tok, [t for t, _ in train]))
    x_te = torch.from_numpy(embed_texts(model, tok, [t for t, _ in test]))
    t_embed = time.perf_counter() - t0
    y_tr = torch.tensor([model.class_index[c] for _, c in train])
    y_te = torch.tensor([model.class_index[c] for _, c in test])
    head = model.head
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for epoch in range(epochs):
        loss = torch.nn.functional.cross_entropy(head(x_tr), y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (epoch + 1) % 100 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.4f}")
    for p in head.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        acc_tr = float((head(x_tr).argmax(-1) == y_tr).float().mean())
        acc_te = float((head(x_te).argmax(-1) == y_te).float().mean()) if len(test) else float("nan")
    record = {"encoder": encoder, "n_train": len(train), "n_test": len(test), "epochs": epochs, "lr": lr,
              "seed": seed, "train_accuracy": acc_tr, "test_accuracy": acc_te, "embed_seconds": round(t_embed, 2),
              "seconds": round(time.perf_counter() - t0, 2)}
    return model, tok, record


def save_text_classifier(model: TextClassifier, tokenizer: Any, out: str | os.PathLike, record: dict[str, Any],
                         extra_files: dict[str, str] | None = None) -> Path:
    """Write the folder atomically (``atomic_folder``: a temporary sibling, fsynced, renamed into place, the parent
    fsynced), with ``extra_files`` (name -> text, e.g. the edit and retention sets made with it); an existing
    folder is refused."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists():
        raise UserError(f"--out {out} exists; name a new folder")
    with atomic_folder(out, replace=False, what="--out") as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        model.config.to_json_file(str(tmp / "config.json"))
        tokenizer.save_pretrained(str(tmp))
        meta = {"format": FORMAT, "class_names": model.class_names, "pooling": "mean+l2", "max_length": model.max_length,
                "editor_defaults": model.editor_defaults, "training": record}
        atomic_write_text(tmp / CLASSIFIER_FILE, json.dumps(meta, indent=1))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


def is_classifier_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CLASSIFIER_FILE).is_file()


def load_text_classifier(path: str | os.PathLike) -> tuple[TextClassifier, Any]:
    """``(model, tokenizer)`` of a saved classifier folder, in eval mode with every parameter frozen."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(path)
    try:
        meta = json.loads((path / CLASSIFIER_FILE).read_text())
        names = meta["class_names"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path / CLASSIFIER_FILE}: not a readable classifier description ({exc})") from None
    config = AutoConfig.from_pretrained(str(path))
    model = TextClassifier(AutoModel.from_config(config), names, max_length=int(meta.get("max_length", 128)),
                           editor_defaults=meta.get("editor_defaults"))
    try:
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict(state)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{path / 'model.safetensors'}: cannot load the classifier's weights ({exc})") from None
    tok = AutoTokenizer.from_pretrained(str(path))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok
