"""One detection run: resolve the config (file, ``--set``, flags), build the data and the detector, train,
evaluate on the test clips, count parameters and operations, and write ``results.json`` and the weights.

Written as ``lifelong run`` writes a class-incremental run: the full resolved config, the seed and the package
versions go into ``results.json`` (strict JSON, written last, atomically, the old one removed first), the
weights into ``model.safetensors`` (atomically). Every config is built and validated before any work starts,
so bad input ends with one line and nothing written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform as _platform
import random
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lifelong.detection.data import DetectionSet
from lifelong.detection.models import DETECTORS
from lifelong.platform import registry
from lifelong.platform.atomic import atomic_write_text, atomic_write_with
from lifelong.platform.config import ConfigError, build_config, deep_merge, field_names, load_yaml, to_dict
from lifelong.platform.errors import user_os_errors

TOP_LEVEL_KEYS = ("benchmark", "seed", "device", "model_config", "benchmark_config")


@dataclass
class DetectorConfig:
    """The detector and its training."""

    model: str = "hsvt"  # hsvt | conv-lstm | spiking
    dim: int = 16  # channel width of the spatial and temporal modules
    memory: bool = True  # False: the recurrent state is cleared at every bin (the temporal module's ablation)
    epochs: int = 6
    batch_size: int = 16  # clips
    lr: float = 0.002
    weight_decay: float = 0.0001
    top_k: int = 20  # detections kept per frame

    def validate(self) -> None:
        if self.model not in DETECTORS:
            raise ValueError(f"model: {self.model!r} is not allowed; allowed values: {', '.join(DETECTORS)}")
        if not 4 <= self.dim <= 256 or self.dim % 4:
            raise ValueError(f"dim must be a multiple of 4 between 4 and 256, got {self.dim}")
        for name in ("epochs", "batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay not negative, got {self.lr}, {self.weight_decay}")


@dataclass
class DetectRunConfig:
    """Everything a detection run depends on."""

    benchmark: str = "event-detection"
    seed: int = 0
    device: str = "auto"
    model_config: Any = field(default_factory=dict)
    benchmark_config: Any = field(default_factory=dict)


def _detection_benchmark(name: str) -> registry.PluginSpec:
    spec = registry.get("benchmark", name)
    if spec.produces != "detection":
        takers = [s.name for s in registry.list_plugins("benchmark") if s.produces == "detection"]
        raise ConfigError(f"benchmark {name!r} produces {spec.produces}, not detection clips; `detect` takes one "
                          f"of: {', '.join(takers)}")
    return spec


def _route(flat: dict[str, Any], benchmark: str) -> dict[str, Any]:
    """``--set`` keys: top-level keys stay, a detector key goes to model_config, a benchmark key to its config."""
    model_keys, bench_keys = field_names(DetectorConfig), field_names(_detection_benchmark(benchmark).config)
    routed: dict[str, Any] = {}
    for key, value in flat.items():
        if key in TOP_LEVEL_KEYS:
            routed = deep_merge(routed, {key: value})
        elif key in model_keys and key in bench_keys:
            raise ConfigError(f"--set {key}: ambiguous; write model_config.{key} or benchmark_config.{key}")
        elif key in model_keys or key in bench_keys:
            routed = deep_merge(routed, {"model_config" if key in model_keys else "benchmark_config": {key: value}})
        else:
            allowed = sorted(set(TOP_LEVEL_KEYS) | set(model_keys) | set(bench_keys))
            raise ConfigError(f"unknown config key {key!r} for detect on {benchmark}; allowed keys: {', '.join(allowed)}")
    return routed


def resolve_detect_config(*, benchmark: str | None = None, model: str | None = None,
                          config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                          seed: int | None = None, device: str | None = None) -> DetectRunConfig:
    """Merge a YAML file, ``--set`` overrides and flags; both configs built and validated as dataclasses."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    benchmark = benchmark or data.get("benchmark") or "event-detection"
    spec = _detection_benchmark(benchmark)
    flat = {k: v for k, v in data.items() if k not in TOP_LEVEL_KEYS}
    data = deep_merge({k: v for k, v in data.items() if k in TOP_LEVEL_KEYS}, _route(flat, benchmark))
    if overrides:
        data = deep_merge(data, _route(overrides, benchmark))
    data["benchmark"] = benchmark
    for key, value in (("seed", seed), ("device", device)):
        if value is not None:
            data[key] = value
    if model is not None:
        data = deep_merge(data, {"model_config": {"model": model}})
    for section in ("model_config", "benchmark_config"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a mapping of keys and values, got {data[section]!r}")
    config = build_config(DetectRunConfig, data)
    model_cfg = build_config(DetectorConfig, config.model_config, prefix="model_config.")
    bench_cfg = build_config(spec.config, {**config.benchmark_config, "seed": config.seed}, prefix="benchmark_config.")
    return dataclasses.replace(config, model_config=model_cfg, benchmark_config=bench_cfg)


def package_versions() -> dict[str, str]:
    """The versions a detection result depends on (the detection engine may not import ``incremental``'s)."""
    versions = {"python": _platform.python_version()}
    for name in ("lifelong", "torch", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON; an AP of a class with no boxes is NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_detection(config: DetectRunConfig, out: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Train and evaluate the detector of ``config``; write ``out/results.json`` and ``out/model.safetensors``."""
    import torch
    from safetensors.torch import save_file

    from lifelong.detection.engine import evaluate, operations_per_frame, predict, timed, train_detector
    from lifelong.detection.models import build_detector, n_parameters
    from lifelong.platform.device import resolve_device

    device = resolve_device(config.device)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    data: DetectionSet = registry.get("benchmark", config.benchmark).factory(config.benchmark_config)
    mc = config.model_config
    torch.manual_seed(config.seed)
    model = build_detector(mc.model, data.frame_shape[1], data.n_classes, mc.dim, mc.memory)
    losses, train_s = timed(lambda: train_detector(
        model, data.train, data.n_classes, epochs=mc.epochs, batch_size=mc.batch_size, lr=mc.lr,
        weight_decay=mc.weight_decay, seed=config.seed, device=device,
        progress=lambda e, loss: log(f"epoch {e + 1}/{mc.epochs}: loss {loss:.4f}")))
    found, eval_s = timed(lambda: predict(model, data.test, mc.batch_size, device, mc.top_k))
    metrics = evaluate(found, data.test, data.n_classes)
    results = {
        "benchmark": config.benchmark, "model": mc.model, "seed": config.seed, "class_names": data.class_names,
        "map_50": metrics["all"]["map_50"], "map": metrics["all"]["map"],
        "still_map_50": metrics["still"]["map_50"], "still_map": metrics["still"]["map"],
        "metrics": metrics, "parameters": n_parameters(model),
        "ops_per_frame": operations_per_frame(model, data.test.frames[:8], device),
        "train_loss": losses, "train_time_s": train_s, "eval_time_s": eval_s, "device": str(device),
        "data": data.info, "config": to_dict(config), "versions": package_versions(),
    }
    with user_os_errors("cannot write results to", out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").unlink(missing_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_with(out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out / "results.json", json.dumps(_finite(results), indent=2, allow_nan=False) + "\n")
    return results


def format_results(results: dict[str, Any]) -> str:
    """The summary table ``lifelong detect`` prints."""
    ops = results["ops_per_frame"]
    still = results["metrics"]["still"]
    lines = [f"{results['model']} on {results['benchmark']} (seed {results['seed']}; simulated events, a stand-in):",
             f"  mAP@0.5 {100 * (results['map_50'] or 0):.1f}   mAP@0.5:0.95 {100 * (results['map'] or 0):.1f}",
             f"  stopped objects ({still['objects']} in {still['frames']} frames): mAP@0.5 "
             f"{100 * (results['still_map_50'] or 0):.1f}   mAP@0.5:0.95 {100 * (results['still_map'] or 0):.1f}",
             "  mAP@0.5 per bin: " + " ".join(f"{100 * (v or 0):.0f}" for v in results["metrics"]["per_bin_map_50"]),
             f"  parameters {results['parameters']:,}   per frame: {ops['macs'] / 1e6:.2f} M MACs, "
             f"{ops['sops'] / 1e6:.2f} M SOPs, {ops['energy_nj']:.0f} nJ   train {results['train_time_s']:.0f} s"]
    return "\n".join(lines)
