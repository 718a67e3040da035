"""What the model editors need from a model family, in one place: its layer stack, how one edit becomes model
inputs and a target loss, teacher-forced predictions, generation and perplexity.

The editors (``lifelong/editors/``: SoLA, GRACE, FT-L) work on any of three families through an ``EditIO``
(``editable_io(model, tokenizer)``), so none of them knows which family it edits:

- **causal LM** (Llama, GPT-2, ...): an edit is the prompt followed by the target tokens, trained teacher-forced on
  the target positions; the query token (where routing keys are read) is the last prompt token.
- **seq2seq** (T5 family): the prompt is the encoder's input, the target the decoder's labels, teacher-forced after
  the decoder start token. The editors sit in the *encoder* blocks (``encoder.block``), as GRACE's T5 setting puts
  its codebook in an encoder block's feed-forward layer; the query token is the last encoder token of the prompt,
  and a decision taken there holds for every decoder step (the encoder runs once per generation).
- **sentence classifier** (``adapters/lm/text_classifier.py``, a BERT-family encoder with a linear head): the prompt
  is the input text and the target a class name; an edit has one "target token", the class index, and its loss is
  the cross-entropy of the class logits. The editors sit in the encoder's layers (``encoder.encoder.layer``); the
  query token is the last token of the input (``[SEP]``, which attends over the whole sentence).

``edit_layers`` finds a model's editable stack by the attribute paths of these families; ``edit_module_names``
names a module (``mlp.down_proj``, ``layer.1.DenseReluDense.wo``, ``output.dense``) inside chosen layers.
``editor_defaults`` gives per-family editor settings for layers and modules (a causal LM keeps the editors' own
defaults, measured on SmolLM2-135M).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lifelong.platform.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: ``lifelong.editing.editor`` imports this module cheaply
    import torch
    from torch import nn

#: attribute paths of editable layer stacks, tried in order (decoder stacks of causal LMs, T5's encoder blocks,
#: the BERT encoder inside ``TextClassifier`` and a bare BERT)
LAYER_PATHS: tuple[str, ...] = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                                "encoder.block", "encoder.encoder.layer", "encoder.layer")


def edit_layers(model: "nn.Module") -> tuple[str, "nn.ModuleList"]:
    """``(path, layers)`` of the layer stack the editors work in (see ``LAYER_PATHS``)."""
    from torch import nn

    for path in LAYER_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return path, mod
    raise ValueError(f"cannot find the editable layers of {type(model).__name__} (tried {', '.join(LAYER_PATHS)})")


def layer_index(model: nn.Module, layer: int) -> int:
    """``layer`` as a non-negative index into ``edit_layers`` (negative counts from the end)."""
    n = len(edit_layers(model)[1])
    j = layer + n if layer < 0 else layer
    if not 0 <= j < n:
        raise ValueError(f"layer {layer} does not exist; the model has layers 0..{n - 1}")
    return j


def edit_module_names(model: nn.Module, layers: Sequence[int], module: str) -> list[str]:
    """Full names of ``module`` inside the given editable layers (negative = from the end)."""
    path, _ = edit_layers(model)
    return [f"{path}.{layer_index(model, i)}.{module}" for i in layers]


def model_family(model: nn.Module) -> str:
    """``classifier``, ``seq2seq`` or ``causal``."""
    if getattr(model, "is_text_classifier", False):
        return "classifier"
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return "seq2seq"
    return "causal"


def editor_defaults(model: nn.Module, editor: str) -> dict[str, Any]:
    """Layer and module settings of ``editor`` for this model's family ({} for a causal LM: the editors'
    defaults). A classifier folder may carry its own (``TextClassifier.editor_defaults``)."""
    own = getattr(model, "editor_defaults", None)
    if isinstance(own, dict) and editor in own:
        return dict(own[editor])
    family = model_family(model)
    if family == "causal":
        return {}
    n = len(edit_layers(model)[1])
    layer = max(n - 2, 0)
    if family == "seq2seq":
        ffn_out, attn_out = "layer.1.DenseReluDense.wo", "layer.0.SelfAttention.o"
    else:
        ffn_out, attn_out = "output.dense", "attention.output.dense"
    if editor == "sola":
        return {"layers": [layer], "modules": [attn_out, ffn_out]}
    if editor in ("grace", "ft-l"):
        return {"layer": layer, "module": ffn_out}
    return {}


def editable_io(model: nn.Module, tokenizer: Any) -> "EditIO":
    """The ``EditIO`` of the model's family."""
    family = model_family(model)
    cls = {"classifier": ClassifierIO, "seq2seq": Seq2SeqIO}.get(family, CausalIO)
    return cls(model, tokenizer)


def _pad(seqs: Sequence[Sequence[int]], pad: int, device: Any, *, left: bool = False
         ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Token ids padded to one length and their attention mask: right-padded (teacher forcing, keys at a query
    index), or left-padded for ``generate`` (every row's last prompt token in the last column)."""
    import torch

    length = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def join_ids(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target that follows it (a space between them, EasyEdit style)."""
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    sep = "" if (not target or target[0].isspace() or prompt.endswith((" ", "\n"))) else " "
    full = tokenizer(prompt + sep + target, add_special_tokens=False).input_ids
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        return p_ids, full[len(p_ids) :]
    return p_ids, tokenizer(sep + target, add_special_tokens=False).input_ids


#: ``run(inputs, query_index) -> logits``: the caller's forward (under its lock, routing block and autocast)
Runner = Callable[[dict[str, Any], Any], Any]


class EditIO:
    """One model family's answer to what an editor and an edit session ask of a model (see the module docstring).

    ``edit_inputs`` gives ``(inputs, target ids, query index)`` of one edit; ``target_logits`` the logits over the
    target positions of those inputs, ``(n_target, vocab or classes)``; ``forward`` runs the model on inputs
    (keys are captured by the editors' hooks); ``prompt_batch`` the right-padded inputs of prompts and their query
    indices; ``teacher_forced`` the argmax over the target positions of each (prompt, target); ``generate`` a greedy
    continuation (a classifier: its predicted class); ``text_nll`` the summed negative log-likelihood and token
    count of texts (None where the family has no language-model head)."""

    family = "causal"

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def check_target(self, target: str) -> None:
        """Refuse (UserError) a target the model cannot produce (a classifier: not one of its classes)."""

    def edit_inputs(self, prompt: str, target: str) -> tuple[dict[str, Any], torch.Tensor, int]:
        raise NotImplementedError

    def target_logits(self, inputs: dict[str, Any], start: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any]) -> Any:
        return self.model(**inputs)

    def prompt_batch(self, prompts: Sequence[str]) -> tuple[dict[str, Any], torch.Tensor]:
        raise NotImplementedError

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], run: Runner, batch_size: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        raise NotImplementedError

    def generate_batch(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[list[int], str]]:
        """Greedy continuations of several prompts in one call (a family without a batched path: one by one)."""
        return [self.generate(p, max_new_tokens) for p in prompts]

    def text_nll(self, texts: Sequence[str], run: Runner, batch_size: int = 8) -> list[tuple[float, int]] | None:
        return None


class CausalIO(EditIO):
    """A decoder-only language model: prompt and target in one sequence."""

    family = "causal"

    def edit_inputs(self, prompt: str, target: str) -> tuple[dict[str, Any], torch.Tensor, int]:
        import torch

        p_ids, t_ids = join_ids(self.tokenizer, prompt, target)
        ids = torch.tensor([p_ids + t_ids], device=self.device)
        return {"input_ids": ids}, torch.tensor(t_ids, device=self.device), len(p_ids) - 1

    def target_logits(self, inputs: dict[str, Any], start: int, n: int) -> torch.Tensor:
        return self.model(**inputs).logits[0, start : start + n]

    def prompt_batch(self, prompts: Sequence[str]) -> tuple[dict[str, Any], torch.Tensor]:
        import torch

        enc = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        ids, mask = _pad(enc, self.pad_id, self.device)
        return {"input_ids": ids, "attention_mask": mask}, torch.tensor([len(e) - 1 for e in enc], device=self.device)

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], run: Runner, batch_size: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        pairs = [join_ids(self.tokenizer, p, t) for p, t in zip(prompts, targets)]
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            ids, mask = _pad([p + t for p, t in chunk], self.pad_id, self.device)
            qidx = torch.tensor([len(p) - 1 for p, _ in chunk], device=self.device)
            preds = run({"input_ids": ids, "attention_mask": mask}, qidx).argmax(-1).cpu().numpy()
            for i, (p, t) in enumerate(chunk):
                out.append((preds[i, len(p) - 1 : len(p) + len(t) - 1], np.asarray(t)))
        return out

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_id, temperature=None, top_p=None, top_k=None)
        new = out[0, enc.input_ids.shape[1] :].tolist()
        return new, self.tokenizer.decode(new, skip_special_tokens=True)

    def generate_batch(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[list[int], str]]:
        """Greedy continuations of the prompts in one left-padded ``generate`` call (positions follow the attention
        mask, so each row is its prompt's own greedy decode up to float rounding); tokens after an end of sequence
        are dropped, as a single-prompt call would stop there."""
        enc = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        ids, mask = _pad(enc, self.pad_id, self.device, left=True)
        length = ids.shape[1]
        out = self.model.generate(input_ids=ids, attention_mask=mask,
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_id, temperature=None, top_p=None, top_k=None)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stops = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        results = []
        for row in out[:, length:].tolist():
            new: list[int] = []
            for t in row:
                new.append(t)
                if t in stops:
                    break
            results.append((new, self.tokenizer.decode(new, skip_special_tokens=True)))
        return results

    def text_nll(self, texts: Sequence[str], run: Runner, batch_size: int = 8) -> list[tuple[float, int]] | None:
        """Summed next-token negative log-likelihood of each text (from its second token on) and its count; the
        routing query is the text's first token (a text that routes nowhere scores the base model's)."""
        import torch

        enc = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        out: list[tuple[float, int]] = []
        for s in range(0, len(enc), batch_size):
            chunk = enc[s : s + batch_size]
            ids, mask = _pad(chunk, self.pad_id, self.device)
            qidx = torch.zeros(len(chunk), dtype=torch.long, device=self.device)
            logp = torch.log_softmax(run({"input_ids": ids, "attention_mask": mask}, qidx).float(), -1)
            for i, e in enumerate(chunk):
                if len(e) < 2:
                    out.append((0.0, 0))
                    continue
                tgt = torch.tensor(e[1:], device=logp.device)
                out.append((float(-logp[i, : len(e) - 1].gather(-1, tgt[:, None]).sum()), len(e) - 1))
        return out


class Seq2SeqIO(EditIO):
    """An encoder-decoder model (T5 family): the prompt goes to the encoder, the target is the decoder's labels."""

    family = "seq2seq"

    @property
    def start_id(self) -> int:
        cfg = self.model.config
        start = getattr(cfg, "decoder_start_token_id", None)
        return int(start if start is not None else self.pad_id)

    def _prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt).input_ids)

    def _target_ids(self, target: str) -> list[int]:
        return list(self.tokenizer(target).input_ids)

    def edit_inputs(self, prompt: str, target: str) -> tuple[dict[str, Any], torch.Tensor, int]:
        import torch

        p, t = self._prompt_ids(prompt), self._target_ids(target)
        dec = [self.start_id] + t[:-1]
        inputs = {"input_ids": torch.tensor([p], device=self.device),
                  "decoder_input_ids": torch.tensor([dec], device=self.device)}
        return inputs, torch.tensor(t, device=self.device), len(p) - 1

    def target_logits(self, inputs: dict[str, Any], start: int, n: int) -> torch.Tensor:
        return self.model(**inputs).logits[0, :n]

    def prompt_batch(self, prompts: Sequence[str]) -> tuple[dict[str, Any], torch.Tensor]:
        import torch

        enc = [self._prompt_ids(p) for p in prompts]
        ids, mask = _pad(enc, self.pad_id, self.device)
        dec = torch.full((len(enc), 1), self.start_id, dtype=torch.long, device=self.device)
        return ({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec},
                torch.tensor([len(e) - 1 for e in enc], device=self.device))

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], run: Runner, batch_size: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        out: list[tuple[np.ndarray, np.ndarray]] = []
        pairs = [(self._prompt_ids(p), self._target_ids(t)) for p, t in zip(prompts, targets)]
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            ids, mask = _pad([p for p, _ in chunk], self.pad_id, self.device)
            dec, dmask = _pad([[self.start_id] + t[:-1] for _, t in chunk], self.pad_id, self.device)
            qidx = torch.tensor([len(p) - 1 for p, _ in chunk], device=self.device)
            logits = run({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
                          "decoder_attention_mask": dmask}, qidx)
            preds = logits.argmax(-1).cpu().numpy()
            for i, (_, t) in enumerate(chunk):
                out.append((preds[i, : len(t)], np.asarray(t)))
        return out

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        import torch

        ids = torch.tensor([self._prompt_ids(prompt)], device=self.device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, decoder_start_token_id=self.start_id,
                                  pad_token_id=self.pad_id, temperature=None, top_p=None, top_k=None)
        new = out[0, 1:].tolist()  # after the decoder start token
        return new, self.tokenizer.decode(new, skip_special_tokens=True)


class ClassifierIO(EditIO):
    """A sentence classifier (``adapters/lm/text_classifier.TextClassifier``): the target is a class name."""

    family = "classifier"

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def check_target(self, target: str) -> None:
        if target not in self.model.class_index:
            names = self.class_names
            raise UserError(f"target {target!r} is not a class of this classifier ({len(names)} classes: "
                            f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")

    def _ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, truncation=True, max_length=self.model.max_length).input_ids)

    def edit_inputs(self, prompt: str, target: str) -> tuple[dict[str, Any], torch.Tensor, int]:
        import torch

        self.check_target(target)
        ids = self._ids(prompt)
        inputs = {"input_ids": torch.tensor([ids], device=self.device)}
        return inputs, torch.tensor([self.model.class_index[target]], device=self.device), len(ids) - 1

    def target_logits(self, inputs: dict[str, Any], start: int, n: int) -> torch.Tensor:
        return self.model(**inputs).logits[:1]

    def prompt_batch(self, prompts: Sequence[str]) -> tuple[dict[str, Any], torch.Tensor]:
        import torch

        enc = [self._ids(p) for p in prompts]
        ids, mask = _pad(enc, self.pad_id, self.device)
        return {"input_ids": ids, "attention_mask": mask}, torch.tensor([len(e) - 1 for e in enc], device=self.device)

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], run: Runner, batch_size: int = 32
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The predicted class against the target class (-1 for a name that is not a class), one each."""
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for s in range(0, len(prompts), batch_size):
            inputs, qidx = self.prompt_batch(prompts[s : s + batch_size])
            preds = run(inputs, qidx).argmax(-1).cpu().numpy()
            for p, t in zip(preds, targets[s : s + batch_size]):
                out.append((np.asarray([p]), np.asarray([self.model.class_index.get(t, -1)])))
        return out

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        inputs, _ = self.prompt_batch([prompt])
        k = int(self.model(**inputs).logits[0].argmax())
        return [k], self.class_names[k]
