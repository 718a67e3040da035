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
                   "component": "components", "branch": "scorers"}


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
    ("platform/metrics.py", "import lifelong.strategies.baselines"),   # the platform reaching for a plugin
    ("strategies/naive_probe.py", "import lifelong.editors.sola"),      # one plugin family importing another
    ("adapters/backbones.py", "import lifelong.benchmarks.split_digits"),  # a model family reading a data set
])
def test_an_upward_import_breaks_the_contracts(tmp_path: Path, module: str, edge: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "lifelong", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "lifelong" / module
    target.write_text((target.read_text() if target.exists() else "") + f"\n{edge}\n")
    proc = _lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-2000:]


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
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:bench|docs|lifelong|tests|configs|examples|platform|editing|strategies|editors|scorers|adapters|benchmarks|cli)/[\w./-]*\w\.(?:py|md|yaml|jsonl|json))")


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
