"""The package layout is a contract: import layers hold (and a broken one is caught), every built-in plugin lives in
its family's package, the README, docs/architecture.md and the registry agree, and no file points outside the
repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.platform import registry

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lifelong"
FAMILY_PACKAGES = {"strategy": "strategies", "editor": "editors", "scorer": "scorers", "benchmark": "benchmarks",
                   "component": "components", "branch": "scorers", "encoder": "encoders"}


def _lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    """import-linter over the ``lifelong`` package found first on ``root``."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_import_contracts_hold() -> None:
    proc = _lint_imports(REPO, REPO / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, edge", [
    ("platform/config.py", "import lifelong.incremental.run"),           # the core reaching for an engine
    ("incremental/metrics.py", "import lifelong.strategies.baselines"),   # an engine reaching for a plugin
    ("incremental/results.py", "import lifelong.editing.store"),          # one engine importing the other
    ("adapters/nets/backbones.py", "import lifelong.adapters.lm.model_loading"),  # vision nets importing LMs
    ("strategies/naive_probe.py", "import lifelong.editors.sola"),      # one plugin family importing another
    ("adapters/nets/backbones.py", "import lifelong.benchmarks.split_digits"),  # a model family reading a data set
])
def test_an_upward_import_breaks_the_contracts(tmp_path: Path, module: str, edge: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "lifelong", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "lifelong" / module
    target.write_text((target.read_text() if target.exists() else "") + f"\n{edge}\n")
    proc = _lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-2000:]


def _file_cycles(root: Path) -> list[tuple[str, ...]]:
    """Each pair of modules of the ``lifelong`` found first on ``root`` that import each other, directly or through
    others: one edge ``m -> d`` whose target reaches ``m`` again. grimp sees imports inside functions too, so a cycle
    that a function-local import hides is still found."""
    code = ("import json, grimp\n"
            "g = grimp.build_graph('lifelong', cache_dir=None)\n"
            "out = {tuple(sorted((m, d))) for m in g.modules for d in g.find_modules_directly_imported_by(m)\n"
            "       if d != m and g.find_shortest_chain(importer=d, imported=m)}\n"
            "print(json.dumps(sorted(out)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(c) for c in json.loads(proc.stdout)]


def test_no_import_cycle_between_files() -> None:
    assert _file_cycles(REPO) == []


def test_an_injected_file_cycle_is_caught(tmp_path: Path) -> None:
    # text_classifier -> encoder_files is real; the injected encoder_files -> text_classifier closes a cycle, and
    # inside a function, where a reader would not see it
    shutil.copytree(PACKAGE, tmp_path / "lifelong", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "lifelong" / "adapters" / "lm" / "encoder_files.py"
    target.write_text(target.read_text() + "\n\ndef _hidden():\n    from lifelong.adapters.lm import text_classifier  # noqa\n")
    cycles = _file_cycles(tmp_path)
    assert any("lifelong.adapters.lm.encoder_files" in c and "lifelong.adapters.lm.text_classifier" in c for c in cycles), cycles


def test_every_builtin_plugin_lives_in_its_family_package() -> None:
    for spec in registry.list_plugins():
        if spec.source != "builtin" or not spec.module.startswith("lifelong."):
            continue  # third-party plugins, and ones a test registers in-process
        package = FAMILY_PACKAGES[spec.kind]
        assert spec.module.startswith(f"lifelong.{package}."), f"{spec.kind} {spec.name} registered in {spec.module}"


def _layout_packages(text: str) -> set[str]:
    return set(re.findall(r"^\s*lifelong/(\w+)/", text, flags=re.M))


def test_readme_architecture_and_code_agree_on_the_packages() -> None:
    actual = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    assert _layout_packages(layout.split("```")[1]) == actual
    architecture = (REPO / "docs" / "architecture.md").read_text()
    assert {m for m in re.findall(r"^  (\w+)/ ", architecture, flags=re.M)} == actual
    # the kind table names the package and the built-in plugins of each kind, as the registry has them
    for kind, package in FAMILY_PACKAGES.items():
        row = next(line for line in architecture.splitlines() if line.startswith(f"| `{kind}` |"))
        assert f"`lifelong/{package}/`" in row
        listed = {n.strip() for n in row.rstrip(" |").rsplit("|", 1)[1].split(",")}
        registered = {s.name for s in registry.list_plugins(kind)
                      if s.source == "builtin" and s.module.startswith("lifelong.")}
        assert listed == registered, (kind, listed ^ registered)


def test_plugins_list_json_names_each_module(cli) -> None:
    result = cli("plugins", "list", "--json")
    assert result.code == 0, result.stderr
    for row in json.loads(result.stdout)["plugins"]:
        if row["source"] == "builtin":
            assert row["module"].startswith(f"lifelong.{FAMILY_PACKAGES[row['kind']]}."), row


_OUTSIDE = re.compile(r"DESIGN(\.md)?\s*§|\.\./shared|\bmethods/[\w-]+\.md")
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:bench|docs|lifelong|tests|configs|examples|platform|incremental|editing|strategies|editors|scorers|adapters|benchmarks|cli)/[\w./-]*\w\.(?:py|md|yaml|jsonl|json))")


def _sources() -> list[Path]:
    files = [*PACKAGE.rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md", *(REPO / "bench").glob("*.py"), *(REPO / "configs").rglob("*.yaml")]
    return [f for f in files if "__pycache__" not in f.parts]


def test_no_reference_to_documents_outside_the_repository() -> None:
    bad = [f"{f.relative_to(REPO)}: {m.group(0)}" for f in _sources() for m in _OUTSIDE.finditer(f.read_text())]
    assert not bad, bad


def test_every_repository_path_named_in_code_and_docs_exists() -> None:
    missing = []
    for f in _sources():
        for m in _REPO_PATH.finditer(f.read_text()):
            path = m.group(1)
            if "*" in path or "<" in path or "/my-" in path:  # placeholders in examples
                continue
            if not (REPO / path).exists() and not (PACKAGE / path).exists() and not (PACKAGE.parent / path).exists():
                missing.append(f"{f.relative_to(REPO)}: {path}")
    assert not missing, missing


def test_the_readme_python_api_example_runs(tmp_path: Path, monkeypatch) -> None:
    """The README's Python API block, as written, on the embedded digits (its run folder goes to a temporary
    folder): the paths it imports exist and the run it starts finishes with a full accuracy matrix."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("The Python API mirrors the command line"):]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "lifelong.incremental" in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md (Python API)", "exec"), namespace)  # noqa: S102 (the repository's own README)
    results = namespace["results"]
    matrix = results["accuracy_matrix"]
    assert len(matrix) == len(namespace["stream"].train_stream) and all(len(row) == len(matrix) for row in matrix)
    assert (tmp_path / "runs" / "r" / "results.json").is_file()
