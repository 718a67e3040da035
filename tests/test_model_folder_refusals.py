"""Model folders the tool will not load are refused in one line naming the file (exit 2), before transformers sees
them: weights only in a pickle (`pytorch_model.bin`: unpickling runs code; `weights_only` blocked the payload but
the user got torch's traceback), a config naming custom code (`auto_map`: transformers' trust_remote_code
question), and a config nested past the parser; and a saved reward model whose config.json is nested so."""

from __future__ import annotations

import json
import shutil

import pytest
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main


def _copy(src, dst, *, config=None, pickle=False):
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "config.json").write_text(config)
    if pickle:
        for f in dst.glob("*.safetensors"):
            f.unlink()
        (dst / "pytorch_model.bin").write_bytes(b"\x80\x04\x95payload")  # never unpickled
    return dst


@pytest.mark.parametrize("case, message", [
    ("pickle", "pytorch_model.bin: weights in a pickle file are not loaded"),
    ("custom-code", "names custom code (auto_map)"),
    ("nested", "config.json: JSON nested too deeply"),
])
def test_model_folders_that_will_not_load_are_one_line(tiny_llama, tmp_path, capsys, case, message):  # noqa: F811
    config = json.loads((tiny_llama / "config.json").read_text())
    text = {"custom-code": json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}),
            "nested": "[" * 100_000 + "]" * 100_000}.get(case)
    folder = _copy(tiny_llama, tmp_path / case, config=text, pickle=case == "pickle")
    code = main(["edit", "generate", "--model", str(folder), "--prompt", "Hello", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_reward_model_config_nested_past_the_parser_is_one_line(tmp_path, capsys):
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000)
    code = main(["reward", "score", "--model", str(folder), "--prompt", "p", "--response", "r"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err, err
