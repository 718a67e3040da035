"""bench/snn_methods.py's set-up, without training: LaSNN's teacher stays at least 4x its student, and rows that
resolve to the same configuration share one run folder (so one configuration prints one figure)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from _bench import load_bench_script
from lifelong.adapters.nets.backbones import build_backbone

PROTOCOL = {"train_per_class": 5, "test_per_class": 5, "epochs": 4, "teacher_epochs": 12}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("snn_methods")


def _params(name: str) -> int:
    return sum(p.numel() for p in build_backbone(name, (1, 28, 28), 10).parameters())


def test_lasnn_teacher_is_at_least_four_times_the_student(bench: ModuleType) -> None:
    strategy, overrides = bench.PARTS["more"][bench.LASNN_ROW]
    teacher, student = bench.teacher_of(overrides), overrides["model"]
    assert student == "spiking-mnist-half" and teacher in bench.TEACHER_ROWS
    assert overrides["kd"]["feature"] == "attention" and overrides["kd"]["schedule"] == "layerwise"
    assert _params(teacher) >= 4 * _params(student), (teacher, _params(teacher), student, _params(student))
    assert bench.teacher_ratio(overrides) == f"{_params(teacher) / _params(student):.2f}x"


def test_same_configuration_same_folder(bench: ModuleType, tmp_path: Path) -> None:
    out = str(tmp_path)
    folder = {(part, row): bench.resolved(part, row, 0, out, PROTOCOL)[1]
              for part, row in [("one", "snn alone"), ("more", "snn alone"), ("more", "half snn alone"),
                                ("more", bench.LASNN_ROW), ("pre", "ann cnn-small teacher")]}
    assert folder["one", "snn alone"] == folder["more", "snn alone"]
    assert len(set(folder.values())) == 4
    assert bench.resolved("one", "snn alone", 1, out, PROTOCOL)[1] != folder["one", "snn alone"]
    # the student's config names its teacher's run folder, and the teacher trains teacher_epochs epochs
    config, _ = bench.resolved("more", bench.LASNN_ROW, 0, out, PROTOCOL)
    assert config.strategy_config.component_config["kd"].teacher_run == str(folder["pre", "ann cnn-small teacher"])
    teacher, _ = bench.resolved("pre", "ann cnn-small teacher", 0, out, PROTOCOL)
    assert teacher.strategy_config.epochs == 12
