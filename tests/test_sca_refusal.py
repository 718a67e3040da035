"""``--set components=[sca]`` on a model with nothing to prune is refused in one line (exit 2) with no run folder
left behind; it used to train as if pruning, and report a sparsity of zero."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_sca_on_an_mlp_is_refused_in_one_line(cli, tmp_path) -> None:
    out = tmp_path / "run"
    result = cli("run", "--strategy", "naive", "--set", "components=[sca]", "--set", "model=mlp",
                 "--set", "epochs=1", "--set", "n_experiences=2", "--out", str(out))
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "no prunable channel group" in lines[0], result.stderr
    assert not out.exists()
