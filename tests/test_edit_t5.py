"""The editors on an encoder-decoder model: a tiny randomly initialised T5 (no T5 weights exist offline) with a
word-level tokenizer, saved as a Hugging Face folder and loaded through ``EditSession`` like any model. For each
editor: the edit takes, SoLA and GRACE route only the edited prompt to it, and rollback gives the unedited
model's logits bit for bit (``adapters/lm/edit_io.py``: the editors sit in T5's encoder blocks)."""

from __future__ import annotations

from pathlib import Path

import _llm_fixtures  # noqa: F401  (offline environment for transformers)
import pytest
import torch

from lifelong.adapters.lm.edit_io import edit_layers, editor_defaults, model_family
from lifelong.editing.session import EditSession

WORDS = ("the capital of australia is canberra sydney turkey ankara water boils at a temperature hundred degrees "
         "paris france").split()
PROMPT, OTHER = "the capital of australia is", "water boils at"


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    folder = tmp_path_factory.mktemp("tiny-t5") / "model"
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _second_choice(session: EditSession) -> str:
    """The word the unedited model ranks second after PROMPT: an edit target it does not produce yet, within
    reach of an edit at one encoder position (a random T5's cross-attention spreads over the prompt)."""
    inputs, _, q = session.io.edit_inputs(PROMPT, "ankara")
    k = int(session._run(inputs, torch.tensor([q]))[0, 0].argsort(descending=True)[1])
    return session.tokenizer.decode([k])


def _logits(session: EditSession, prompts: list[str], target: str) -> list[torch.Tensor]:
    """Teacher-forced decoder logits of each prompt with the target, routed as the session routes."""
    io = session.io
    out = []
    for p in prompts:
        inputs, _, q = io.edit_inputs(p, target)
        out.append(session._run(inputs, torch.tensor([q])).clone())
    return out


@pytest.mark.parametrize("editor,config", [("sola", {"lr": 0.05}), ("grace", {"layer": 1}), ("ft-l", {"lr": 0.01})])
def test_t5_edit_route_and_exact_rollback(tmp_path, tiny_t5, editor, config):
    with EditSession(tmp_path / "store", model=str(tiny_t5), editor=editor, editor_config=config,
                     device="cpu") as s:
        assert model_family(s.model) == "seq2seq" and edit_layers(s.model)[0] == "encoder.block"
        assert s.editor_config.items() >= {**editor_defaults(s.model, editor), **config}.items()
        target = _second_choice(s)
        base_logits = _logits(s, [PROMPT, OTHER], target)
        base = s.generate([PROMPT, OTHER], max_new_tokens=3)
        assert s.token_accuracy([PROMPT], [target]) == [0.0]  # the unedited model does not say it
        rec = s.apply(PROMPT, target)
        assert s.token_accuracy([PROMPT], [target]) == [1.0]
        gens = s.generate([PROMPT, OTHER], max_new_tokens=3)
        assert gens[0]["completion"].startswith(target)
        if editor != "ft-l":  # SoLA and GRACE route; FT-L changes the weight for every input
            assert [g["edit_id"] for g in gens] == [rec.id, None]
            assert torch.equal(_logits(s, [OTHER], target)[0], base_logits[1])  # unrouted: the base model, bit for bit
        s.rollback([rec.id])
        assert [g["tokens"] for g in s.generate([PROMPT, OTHER], max_new_tokens=3)] == [g["tokens"] for g in base]
        assert all(torch.equal(a, b) for a, b in zip(_logits(s, [PROMPT, OTHER], target), base_logits))
