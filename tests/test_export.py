"""``lifelong edit export|import``: a SoLA edit as a standard PEFT LoRA adapter, loaded by ``PeftModel`` on the base
model with SoLA's routed output on the edit's prompt token for token (greedy), and read back into a store; other
editors' edits and mismatched adapters are refused with one line. A tiny random Llama, one per module."""

from __future__ import annotations

import json

import pytest
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main
from lifelong.editing.session import EditSession

PROMPT, TARGET = "The capital of Australia is", "Canberra"
TINY_SET = ["--set", "layers=[1]", "--set", "modules=[self_attn.o_proj,mlp.down_proj]", "--set", "max_steps=30",
            "--set", "lr=0.05"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory):  # noqa: F811
    """A SoLA store with one edit, the edit exported as a PEFT folder, and SoLA's own greedy tokens on its prompt."""
    root = tmp_path_factory.mktemp("export")
    assert main(["edit", "apply", "--store", str(root / "store"), "--model", str(tiny_llama), "--prompt", PROMPT,
                 "--target", TARGET, *TINY_SET]) == 0
    assert main(["edit", "export", "--store", str(root / "store"), "--id", "1", "--out", str(root / "adapter")]) == 0
    with EditSession(root / "store", model=str(tiny_llama), create=False, quiet=True) as s:
        routed = s.generate([PROMPT], max_new_tokens=10)[0]
    with EditSession(None, model=str(tiny_llama)) as base:
        unedited = base.generate([PROMPT], max_new_tokens=10)[0]
    return {"root": root, "adapter": root / "adapter", "routed": routed, "unedited": unedited, "tiny": tiny_llama}


def _peft_tokens(model_dir, adapter, prompt, n=10):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             num_beams=1, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist()


def test_export_is_a_standard_peft_adapter_with_sola_routed_output(exported):
    adapter = exported["adapter"]
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert sorted(cfg["target_modules"]) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
    assert (adapter / "adapter_model.safetensors").is_file()
    routed = exported["routed"]
    assert routed["edit_id"] == 1 and routed["tokens"] != exported["unedited"]["tokens"]
    assert _peft_tokens(exported["tiny"], adapter, PROMPT) == routed["tokens"]


def test_import_reads_it_back_into_a_store_with_the_same_output(exported, capsys):
    root, tiny = exported["root"], str(exported["tiny"])
    store = str(root / "store2")
    # a SoLA store with the same modules (made by another edit), then the adapter imported with its prompt
    assert run(capsys, "edit", "apply", "--store", store, "--model", tiny, "--prompt", "The Night Watch was painted by",
               "--target", "Rembrandt", *TINY_SET)[0] == 0
    code, out, err = run(capsys, "edit", "import", "--store", store, "--adapter", str(exported["adapter"]),
                         "--prompt", PROMPT, "--target", TARGET, "--model", tiny, "--json")
    assert code == 0, err
    new_id = json.loads(out)["imported"]
    code, out, _ = run(capsys, "edit", "generate", "--store", store, "--prompt", PROMPT, "--max-new-tokens", "10",
                       "--json")
    row = json.loads(out)
    assert row["edit_id"] == new_id and row["completion"] == exported["routed"]["completion"]
    # the imported key is SoLA's own key of the prompt
    from lifelong.editing.store import EditStore
    with EditStore.open(root / "store") as a, EditStore.open(store) as b:
        assert (a.get(1).key == b.get(new_id).key).all()


def test_other_editors_and_mismatched_adapters_are_refused(exported, capsys, tmp_path):
    tiny = str(exported["tiny"])
    grace = str(tmp_path / "grace")
    assert run(capsys, "edit", "apply", "--store", grace, "--editor", "grace", "--model", tiny, "--prompt", PROMPT,
               "--target", TARGET, "--set", "layer=1")[0] == 0
    code, _, err = run(capsys, "edit", "export", "--store", grace, "--id", "1", "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "only SoLA edits" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, "edit", "import", "--store", grace, "--adapter", str(exported["adapter"]),
                       "--prompt", PROMPT, "--target", TARGET, "--model", tiny)
    assert code == 2 and "only a SoLA store" in err
    # an adapter of another rank into a SoLA store of rank 4
    other = tmp_path / "r8"
    other.mkdir()
    cfg = json.loads((exported["adapter"] / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    (other / "adapter_model.safetensors").write_bytes((exported["adapter"] / "adapter_model.safetensors").read_bytes())
    code, _, err = run(capsys, "edit", "import", "--store", str(exported["root"] / "store"), "--adapter", str(other),
                       "--prompt", PROMPT, "--target", TARGET, "--model", tiny)
    assert code == 2 and "rank 8" in err and len(err.strip().splitlines()) == 1
    for args, message in [(["--id", "99"], "no edit with id 99"), (["--id", "1", "--out", str(exported["adapter"])],
                                                                     "not an empty folder")]:
        argv = ["edit", "export", "--store", str(exported["root"] / "store"), *args]
        if "--out" not in args:
            argv += ["--out", str(tmp_path / "y")]
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err
    code, _, err = run(capsys, "edit", "import", "--store", str(tmp_path / "new"), "--adapter", str(tmp_path),
                       "--prompt", PROMPT, "--target", TARGET)
    assert code == 2 and "not a PEFT adapter folder" in err


def test_a_refused_import_into_a_new_store_leaves_nothing_behind(exported, capsys, tmp_path):
    """The new store takes SoLA's default config, whose modules the tiny adapter does not fit: refused after the
    store was created, which is then removed (a folder that existed, empty, stays empty)."""
    for store, existed in [(tmp_path / "new", False), (tmp_path / "empty", True)]:
        if existed:
            store.mkdir()
        code, out, err = run(capsys, "edit", "import", "--store", str(store), "--adapter", str(exported["adapter"]),
                             "--prompt", PROMPT, "--target", TARGET, "--model", str(exported["tiny"]))
        assert code == 2 and [line for line in err.splitlines() if "error" in line] == [
            "lifelong: error: sola layers/modules: layer 24 does not exist; the model has layers 0..1"], err
        assert store.exists() == existed and (not existed or list(store.iterdir()) == [])
    code, _, err = run(capsys, "edit", "import", "--store", str(tmp_path / "new"), "--adapter",
                       str(exported["adapter"]), "--prompt", " ", "--target", TARGET)
    assert code == 2 and "--prompt is empty" in err and not (tmp_path / "new").exists()


def _docs_snippet() -> str:
    """The transformers + PeftModel block of docs/serving.md that loads an export made with --with-base."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "base-model" in b and "PeftModel" in b]
    assert len(blocks) == 1, "docs/serving.md should hold one PeftModel snippet for --with-base"
    return blocks[0]


def test_export_with_base_loads_in_transformers_and_peft_alone(exported, capsys, tmp_path):
    """``--with-base`` writes the base beside the adapter and names it: AutoPeftModelForCausalLM loads the folder
    as it is, and the documented snippet (base from ``base-model/``, then PeftModel) gives SoLA's routed tokens."""
    import contextlib
    import io

    import torch
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "with-base"
    code, stdout, err = run(capsys, "edit", "export", "--store", str(exported["root"] / "store"), "--id", "1",
                            "--out", str(out), "--with-base", "--json")
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base-model").resolve()) == json.loads(stdout)["base_model"]
    assert (out / "base-model" / "config.json").is_file() and (out / "base-model" / "model.safetensors").is_file()

    model = AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "base-model"))
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        got = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert got[0, ids.shape[1]:].tolist() == exported["routed"]["tokens"]

    snippet = _docs_snippet().replace('"runs/australia-adapter"', repr(str(out)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "docs/serving.md", "exec"), {})
    assert printed.getvalue().strip() == tok.decode(exported["routed"]["tokens"]).strip()


def test_export_without_base_says_when_other_tools_cannot_load_the_base(exported, capsys, tmp_path):
    from lifelong.editing.export import is_portable_base

    assert is_portable_base(str(exported["tiny"])) and not is_portable_base("smollm2-135m")
    assert is_portable_base("HuggingFaceTB/SmolLM2-135M") and not is_portable_base(None)
    code, _, err = run(capsys, "edit", "export", "--store", str(exported["root"] / "store"), "--id", "1",
                       "--out", str(tmp_path / "plain"))
    assert code == 0 and "note:" not in err  # the tiny model is a folder: loadable as it is


def _hostile_copy(exported, tmp_path, name, config_text=None, nan=False):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / name
    shutil.copytree(exported["adapter"], folder)
    if config_text is not None:
        (folder / "adapter_config.json").write_text(config_text)
    if nan:
        state = load_file(str(folder / "adapter_model.safetensors"))
        first = sorted(state)[0]
        state[first] = state[first].clone()
        state[first][0, 0] = float("nan")
        save_file(state, str(folder / "adapter_model.safetensors"))
    return folder


def _config_with(exported, **fields):
    cfg = json.loads((exported["adapter"] / "adapter_config.json").read_text())
    cfg.update(fields)
    return json.dumps(cfg)


@pytest.mark.parametrize("name, config, nan, message", [
    ("nested", "[" * 100_000 + "]" * 100_000, False, "nested too deeply"),
    ("huge-r", None, False, "field 'r' must be an integer"),
    ("null-r", None, False, "field 'r' must be an integer"),
    ("nan-alpha", None, False, "field 'lora_alpha' must be a finite positive number"),
    ("nan-weight", None, True, "holds NaN or infinite values"),
])
def test_hostile_adapter_folders_are_refused_in_one_line(exported, capsys, tmp_path, name, config, nan, message):
    """#33: a hostile adapter_config.json (nested 100,000 deep, r a huge float, r null, lora_alpha NaN) or NaN
    weights: one line, exit 2, before the model loads, and no store made (these were tracebacks or a garbage edit)."""
    fields = {"huge-r": {"r": 1e308}, "null-r": {"r": None}, "nan-alpha": {"lora_alpha": float("nan")}}.get(name)
    text = config if config is not None else (_config_with(exported, **fields) if fields else None)
    folder = _hostile_copy(exported, tmp_path, name, text, nan)
    store = tmp_path / "store"
    code, out, err = run(capsys, "edit", "import", "--store", str(store), "--adapter", str(folder),
                         "--prompt", PROMPT, "--target", TARGET, "--model", str(exported["tiny"]))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not store.exists()


def test_an_undecodable_prompt_is_refused_in_one_line(exported, capsys, tmp_path):
    prompt = b"The capital of \xff is".decode("utf-8", "surrogateescape")  # what argv holds for $'...\xff...'
    code, _, err = run(capsys, "edit", "import", "--store", str(tmp_path / "s"), "--adapter", str(exported["adapter"]),
                       "--prompt", prompt, "--target", TARGET, "--model", str(exported["tiny"]))
    assert code == 2 and err.count("\n") == 1 and "--prompt" in err and "surrogate" in err, err
