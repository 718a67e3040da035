"""The language-model reward backbone (``backbone=lm`` of srm and scalar-rm) on a tiny random Llama: the split
reproduces the base model, training separates a learnable preference, save/load keeps only LoRA + head and gives
the same rewards, a different base model is refused, and the CLI runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _llm_fixtures import tiny_llama, tiny_llama_other  # noqa: F401  (fixtures)

from lifelong.benchmarks.preferences import PreferencePair
from lifelong.cli.main import main
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create
from lifelong.scorers import lm_backbone as lb
from lifelong.scorers.reward_model import RewardModel

# a preference a 2-layer random model can learn from its last token: the chosen answer ends with "yes."
PAIRS = [PreferencePair(f"Question number {i}?", f"The answer is {w} yes.", f"The answer is {w} no.", "toy")
         for i, w in enumerate(["red", "blue", "green", "cat", "dog", "tree", "sun", "moon"])]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: one thread never spins against a busy machine

HELD = [PreferencePair("Another question?", "Maybe it is yes.", "Maybe it is no.", "toy")]


def _lm_rm(model: Path, tmp_path: Path, name: str = "scalar-rm", **kw) -> RewardModel:
    opts = dict(backbone="lm", llm=str(model), lora_layers=1, lora_rank=4, lm_epochs=30, lm_lr=3e-3, batch_size=4,
                cache_dir=str(tmp_path), device="cpu", seed=0)
    opts.update(kw)
    return create("scorer", name, **opts)


def test_split_reproduces_the_base_models_last_hidden_state(tiny_llama: Path) -> None:  # noqa: F811
    bb = lb.LMBackbone(str(tiny_llama), "cpu", lora_layers=1, lora_rank=4, lora_alpha=8, dropout=0.0, max_length=64)
    model, tok = bb.model()
    texts = ["Prompt: hi\nResponse: hello there", "Prompt: a longer prompt here\nResponse: and a reply."]
    lb.clear_split_memo()
    inputs = bb.inputs(texts)
    torch.manual_seed(0)
    term = bb.new_text_term().eval()
    batch = inputs[[0, 1]]
    with torch.no_grad():
        top = term.body(inputs_embeds=batch.states, attention_mask=batch.mask).last_hidden_state
    for row, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            want = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0]
        assert torch.allclose(top[row, : len(ids)], want, atol=1e-5)  # LoRA B = 0: exactly the base model
    # memoised: a second call computes nothing and returns the same tensors
    again = bb.inputs(texts)
    assert all(a is b for a, b in zip(again.states, inputs.states))
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in term.body.named_parameters() if ".lora_A" in n}
    assert wrapped == {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}  # every linear


def test_training_learns_the_preference_and_save_load_round_trips(tiny_llama: Path, tiny_llama_other: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    rm = _lm_rm(tiny_llama, tmp_path)
    summary = rm.fit(PAIRS)
    assert summary["n_pairs"] == len(PAIRS)
    assert summary["train_accuracy"] == 1.0 and summary["final_loss"] < 0.3
    assert rm.evaluate(HELD)["accuracy"] == 1.0  # the learned cue carries over to an unseen pair
    # only LoRA and the head were trained: the base copy's weights are frozen
    head = rm.head
    trained = {n for n, p in head.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("text.head.") or n.startswith("branches.") for n in trained)

    out = tmp_path / "rm"
    rm.save(out)
    from safetensors.torch import load_file

    saved = load_file(str(out / "head.safetensors"))
    assert saved and all("lora_" in k or k.startswith("text.head.") or k == "term_offsets" for k in saved)
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["backbone"] == "lm" and meta["base_model"]["weights_sha256"]

    back = RewardModel.load(out, device="cpu")
    items = [(p.prompt, p.chosen) for p in PAIRS[:3]] + [(HELD[0].prompt, HELD[0].rejected)]
    want = [r.reward for r in rm.score_many(items)]
    got = [r.reward for r in back.score_many(items)]
    assert got == pytest.approx(want, abs=1e-5)

    meta["config"]["llm"] = str(tiny_llama_other)  # same architecture, other weights: refused in one line
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="trained on base model"):
        RewardModel.load(out, device="cpu")


def test_same_seed_same_model(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    a = _lm_rm(tiny_llama, tmp_path, lm_epochs=2)
    b = _lm_rm(tiny_llama, tmp_path, lm_epochs=2)
    a.fit(PAIRS[:4])
    b.fit(PAIRS[:4])
    items = [(p.prompt, p.chosen) for p in PAIRS[4:]]
    assert [r.reward for r in a.score_many(items)] == [r.reward for r in b.score_many(items)]


def test_bad_options_are_refused_before_any_work(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(UserError, match="backbone must be one of encoder, lm"):
        create("scorer", "scalar-rm", backbone="gpt")
    with pytest.raises(UserError, match="lora_layers must be >= 1"):
        create("scorer", "srm", backbone="lm", lora_layers=0)
    rm = _lm_rm(tiny_llama, tmp_path, lora_layers=3)  # the tiny model has 2 layers
    with pytest.raises(UserError, match="lora_layers must be between 1 and 2"):
        rm.fit(PAIRS[:2])


def test_cli_train_srm_with_the_lm_backbone_then_score_and_eval(tiny_llama: Path, tmp_path: Path,  # noqa: F811
                                                               capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                        "dimension": p.dimension}) + "\n" for p in PAIRS))
    out = tmp_path / "srm-lm"
    rc = main(["reward", "train", "--scorer", "srm", "--data", str(data), "--out", str(out), "--json",
               "--set", "backbone=lm", "--set", f"llm={tiny_llama}", "--set", "branches=[style]",
               "--set", "lora_layers=1", "--set", "lm_epochs=3", "--set", f"cache_dir={tmp_path}",
               "--set", "device=cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["training"]["n_pairs"] == len(PAIRS)
    rc = main(["reward", "score", "--model", str(out), "--prompt", "Q?", "--response", "The answer is yes.", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    scored = json.loads(captured.out)
    assert set(scored["contributions"]) == {"text", "style"}
    assert sum(scored["contributions"].values()) == pytest.approx(scored["reward"], abs=1e-4)
    rc = main(["reward", "eval", "--model", str(out), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["n_pairs"] == len(PAIRS)


def test_join_texts_puts_the_branch_texts_into_the_lm_input(tiny_llama: Path, tmp_path: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = lb.LMBackbone.inputs

    def recording_inputs(self, texts):
        seen.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(lb.LMBackbone, "inputs", recording_inputs)
    item = ("Question number 1?", "The answer is blue yes.")
    plain = f"Prompt: {item[0]}\nResponse: {item[1]}"
    for join in (True, False):
        seen.clear()
        rm = _lm_rm(tiny_llama, tmp_path, "srm", branches=["style"], join_texts=join)
        f = rm.featurize([item])
        style_text = f.texts["style"][0]
        assert style_text and style_text not in plain
        # the LM reads the branch text after the prompt and response, or with join_texts=false not at all
        assert seen == ([f"{plain}\n{style_text}"] if join else [plain])
