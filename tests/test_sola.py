"""SoLA, GRACE and FT-L on the real SmolLM2-135M: edits take, routing is per sequence, unmatched inputs and
rolled-back edits give the base model's logits bit for bit."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _llm_fixtures import smollm  # noqa: F401  (session fixture)

from lifelong.editing.session import EditSession

P1, T1 = "The capital of Australia is", "Canberra"
P2, T2 = "The capital of Turkey is", "Ankara"
NEAR = "The capital of Spain is"
FAR = "Water boils at a temperature of"


def _last_logits(model, tok, prompts, session=None):
    """Logits at the last token of each prompt, one prompt per forward (inside the editor's routing block)."""
    out, routed = [], []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            if session is None:
                out.append(model(**enc).logits[0, -1].clone())
            else:
                with session.editor.routing():
                    out.append(model(**enc).logits[0, -1].clone())
                    ids = session.editor.routed_ids()
                    routed.append(ids[0] if ids else None)
    return out, routed


@pytest.fixture(scope="module")
def base_refs(smollm):  # noqa: F811
    model, tok = smollm
    logits, _ = _last_logits(model, tok, [P1, P2, NEAR, FAR])
    return logits


def test_sola_empty_store_edit_route_batch_and_rollback(tmp_path, smollm, base_refs):  # noqa: F811
    model, tok = smollm
    with EditSession(tmp_path / "s", loaded=smollm, editor="sola") as s:
        # a store with no edits is the base model, bit for bit
        logits, routed = _last_logits(model, tok, [P1, P2, NEAR, FAR], s)
        assert routed == [None] * 4
        assert all(torch.equal(a, b) for a, b in zip(logits, base_refs))
        base_gen = [g["tokens"] for g in s.generate([P1, P2], max_new_tokens=4)]
        e1 = s.apply(P1, T1)
        e2 = s.apply(P2, T2)
        assert e1.extra["steps"] <= s.editor.config.max_steps
        gens = s.generate([P1, P2, NEAR], max_new_tokens=4)
        assert gens[0]["completion"].startswith(" Canberra") and gens[0]["edit_id"] == e1.id
        assert gens[1]["completion"].startswith(" Ankara") and gens[1]["edit_id"] == e2.id
        assert gens[2]["edit_id"] is None
        assert s.token_accuracy([P1, P2], [T1, T2]) == [1.0, 1.0]
        # an unmatched prompt: the base model's logits, bit for bit
        logits, routed = _last_logits(model, tok, [NEAR, FAR], s)
        assert routed == [None, None]
        assert torch.equal(logits[0], base_refs[2]) and torch.equal(logits[1], base_refs[3])

        # per-sequence routing inside one left-padded batch: two edits and no edit in the same forward
        tok.padding_side = "left"
        enc = tok([P1, FAR, P2], return_tensors="pt", padding=True, add_special_tokens=False)
        tok.padding_side = "right"
        with torch.no_grad(), s.editor.routing():
            out = model(**enc).logits[:, -1]
            assert s.editor.routed_ids() == [e1.id, None, e2.id]
        first = [tok(" " + t, add_special_tokens=False).input_ids[0] for t in (T1, T2)]
        assert out[0].argmax().item() == first[0] and out[2].argmax().item() == first[1]

        # rollback: the rolled-back prompt gets the base model back exactly; the other edit holds
        assert s.rollback([e1.id]) == [(e1.id, True)]
        assert s.rollback([e1.id]) == [(e1.id, False)]
        logits, routed = _last_logits(model, tok, [P1], s)
        assert routed == [None] and torch.equal(logits[0], base_refs[0])
        assert s.generate([P1], max_new_tokens=4)[0]["tokens"] == base_gen[0]
        assert s.generate([P2], max_new_tokens=4)[0]["completion"].startswith(" Ankara")
    # a new session on the same store: the remaining edit is loaded from disk and still routes
    with EditSession(tmp_path / "s", loaded=smollm) as s2:
        assert s2.editor_name == "sola" and s2.loaded_ids == [e2.id]
        g = s2.generate([P2, P1], max_new_tokens=3)
        assert g[0]["edit_id"] == e2.id and g[0]["completion"].startswith(" Ankara")
        assert g[1]["edit_id"] is None and g[1]["tokens"] == base_gen[0][:3]
    # closing detached the editor: the shared model is the base model again
    logits, _ = _last_logits(model, tok, [P1, P2])
    assert torch.equal(logits[0], base_refs[0]) and torch.equal(logits[1], base_refs[1])


def test_grace_edit_and_exact_rollback(tmp_path, smollm, base_refs):  # noqa: F811
    model, tok = smollm
    with EditSession(tmp_path / "g", loaded=smollm, editor="grace") as s:
        e = s.apply(P1, T1)
        g = s.generate([P1, NEAR], max_new_tokens=3)
        assert g[0]["completion"].startswith(" Canberra") and g[0]["edit_id"] == e.id
        assert g[1]["edit_id"] is None
        s.rollback([e.id])
        assert s.editor.codebook == []
        logits, _ = _last_logits(model, tok, [P1], s)
        assert torch.equal(logits[0], base_refs[0])


def test_ftl_edit_and_rollback_restores_weights(tmp_path, smollm, base_refs):  # noqa: F811
    model, tok = smollm
    with EditSession(tmp_path / "f", loaded=smollm, editor="ft-l") as s:
        w0 = model.get_submodule(s.editor.layer_name).weight.detach().clone()
        e = s.apply(P1, T1)
        assert s.token_accuracy([P1], [T1]) == [1.0]
        assert not torch.equal(model.get_submodule(s.editor.layer_name).weight, w0)
        s.rollback([e.id])
        assert torch.equal(model.get_submodule(s.editor.layer_name).weight, w0)
        logits, _ = _last_logits(model, tok, [P1], s)
        assert torch.equal(logits[0], base_refs[0])


def test_routed_lora_per_sequence_newest_wins_and_exact_fallback():
    """RoutedLoRA on a toy module, routing through a faiss Router: rows route independently, a re-edited key goes to
    the newest edit, removing it falls back to the older one, and unmatched rows are the base output bit for bit."""
    from torch import nn

    from lifelong.adapters.lm.routed_lora import RoutedLoRA
    from lifelong.editing.router import Router

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([nn.Module()])
            self.model.layers[0].lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.model.layers[0].lin(x)

    torch.manual_seed(0)
    m = Toy()
    router = Router("ip")  # what the store hands the editor; here the test owns the keys
    r = RoutedLoRA(m, ["model.layers.0.lin"], rank=2, alpha=2, threshold=0.1, router=router)
    k = torch.tensor([1.0, 0, 0, 0])
    for eid, key, b in ((1, k, torch.ones(3, 2)), (2, k * 3, -torch.ones(3, 2)),  # same direction: a re-edit
                        (3, torch.tensor([0, 0, 1.0, 0]), 2 * torch.ones(3, 2))):
        router.add([eid], key.numpy()[None])
        r.add(eid, {"model.layers.0.lin": (torch.ones(2, 4), b)})
    x = torch.tensor([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]], [[0, 0, 2.0, 0]]])
    base = m.model.layers[0].lin.base(x)
    with torch.no_grad(), r.session():
        y = m(x)
        assert r.last_decision.ids == [2, None, 3]
    assert torch.equal(y[1], base[1])
    assert torch.allclose(y[0] - base[0], torch.full((1, 3), -2.0))
    assert torch.allclose(y[2] - base[2], torch.full((1, 3), 8.0))
    router.remove([2])
    r.remove([2])
    with torch.no_grad(), r.session():
        y = m(x)
        assert r.last_decision.ids == [1, None, 3]
    assert torch.allclose(y[0] - base[0], torch.full((1, 3), 2.0))
    # a key in the router whose LoRA is not loaded here (e.g. a corrupted adapter): the base output, not another edit
    r.remove([1])
    with torch.no_grad(), r.session():
        y = m(x)
        assert r.last_decision.ids == [None, None, 3]
    assert torch.equal(y[0], base[0])
    router.remove([1, 3])
    r.remove([3])
    with torch.no_grad(), r.session():
        assert torch.equal(m(x), base)


def test_replayed_frozen_layers_train_bit_identically_and_run_once():
    """editors/_prefix.py on a tiny random Llama: training one layer's weight (as FT-L) with the layers below it
    replayed gives the same losses and weights bit for bit as running them, runs those layers once, recomputes
    them for another input, and leaves the model's own layers in place afterwards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lifelong.editors._prefix import replay_frozen_layers

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    w0 = model.model.layers[2].mlp.down_proj.weight.detach().clone()
    ids = torch.tensor([[3, 14, 15, 9, 2, 6]])
    other = torch.tensor([[5, 3, 5, 8, 9]])
    calls = []
    model.model.layers[0].register_forward_hook(lambda m, i, o: calls.append(1))

    def train(replay: bool) -> tuple[list[float], torch.Tensor, torch.Tensor]:
        param = model.model.layers[2].mlp.down_proj.weight
        param.data.copy_(w0)
        param.requires_grad_(True)
        opt = torch.optim.Adam([param], lr=1e-2)
        losses = []
        block = replay_frozen_layers(model, 2) if replay else contextlib.nullcontext()
        with block:
            for _ in range(4):
                logits = model(input_ids=ids).logits[0, 2:5]
                loss = torch.nn.functional.cross_entropy(logits, ids[0, 3:6])
                losses.append(float(loss.detach()))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                seen = model(input_ids=other).logits  # another input inside the block: computed, not replayed
        param.requires_grad_(False)
        return losses, param.detach().clone(), seen

    layers = list(model.model.layers)
    calls.clear()
    plain = train(False)
    assert len(calls) == 5
    calls.clear()
    replayed = train(True)
    assert len(calls) == 2  # once for the training input, once for the other one
    assert plain[0] == replayed[0] and len(set(plain[0])) == 4  # the loss moves, identically
    assert torch.equal(plain[1], replayed[1]) and not torch.equal(plain[1], w0)
    assert torch.equal(plain[2], replayed[2])
    assert list(model.model.layers) == layers
    with replay_frozen_layers(model, -1):  # negative: from the end, as the editors' layer options
        assert type(model.model.layers[2]).__name__ == "_Memo" and model.model.layers[3] is layers[3]
    model.model.layers[1].mlp.up_proj.weight.requires_grad_(True)
    with replay_frozen_layers(model, 3):  # a trainable parameter below: nothing is replayed
        assert list(model.model.layers) == layers
    model.model.layers[1].mlp.up_proj.weight.requires_grad_(False)
