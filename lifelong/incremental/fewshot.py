"""The few-shot engine behind ``lifelong fewshot``: meta-train a method on episodes, pick the step by the
validation episodes, evaluate it on 600 test episodes, write results.json like ``run`` does.

A method is a registered strategy whose learner is also an ``EpisodicLearner`` (``fsl-snn``): the same plugin
then runs on few-shot class-incremental streams through ``run`` and on episodes here. The loop, the class
split and the evaluation are the engine's, the same for every method, so methods are compared on the same
episodes (``episodes.py``).

Choices: training episodes are drawn as ``episode(i)`` for i = 0..train_episodes-1 of the meta-training
sampler; every ``val_every`` episodes (and at the end) the model is scored on ``val_episodes`` validation
episodes and the best state is kept (the first best on ties); without validation classes the last state is
tested. Test accuracy is per episode (queries of one episode right / queries), then mean and 95 % interval.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lifelong.incremental.checkpoint import seed_everything, step_seed
from lifelong.incremental.episodes import Episode, load_pool, mean_ci95, samplers, split_classes, split_counts
from lifelong.incremental.learner import RunContext
from lifelong.incremental.results import package_versions, to_json
from lifelong.platform import registry
from lifelong.platform.atomic import atomic_write_text, folder_lock
from lifelong.platform.config import ConfigError, build_config, deep_merge, field_names, load_yaml, to_dict
from lifelong.platform.device import resolve_device
from lifelong.platform.errors import UserError, user_os_errors

if TYPE_CHECKING:
    import torch


class EpisodicLearner(abc.ABC):
    """What ``lifelong fewshot`` needs of a method besides ``Learner``: train on one episode, score one."""

    @abc.abstractmethod
    def train_episode(self, episode: Episode) -> float:
        """One optimisation step on ``episode``; returns the loss."""

    @abc.abstractmethod
    def episode_logits(self, episode: Episode) -> "torch.Tensor":
        """Logits ``[queries, n_way]`` of the episode's queries against its support (eval mode, no gradient)."""

    def episode_cost(self, episode: Episode) -> dict[str, float]:
        """Operations of scoring one episode (support and queries): spike-driven accumulates and MACs."""
        return {}


@dataclass
class FewShotConfig:
    """One few-shot run: the method and the benchmark by name, the episode shape, the class split, the budget."""

    method: str = "fsl-snn"
    benchmark: str = "split-digits"
    seed: int = 0
    device: str = "auto"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    train_classes: int = 0  # 0 = chosen from the number of classes (episodes.split_counts)
    val_classes: int = 0
    test_classes: int = 0
    train_episodes: int = 400
    val_episodes: int = 100
    val_every: int = 100
    test_episodes: int = 600
    method_config: Any = field(default_factory=dict)
    benchmark_config: Any = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("k_shot", "n_query", "test_episodes", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("train_episodes", "val_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.n_way < 2:
            raise ValueError(f"n_way must be at least 2, got {self.n_way}")


TOP_LEVEL = tuple(f.name for f in dataclasses.fields(FewShotConfig))


def resolve_fewshot_config(*, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                           method: str | None = None, benchmark: str | None = None, seed: int | None = None,
                           device: str | None = None) -> FewShotConfig:
    """Merge a YAML file, ``--set`` keys (each goes to the one config that has it) and flags; build the
    method's and the benchmark's typed configs now, so bad input fails before any work."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for key, value in (("method", method), ("benchmark", benchmark), ("seed", seed), ("device", device)):
        if value is not None:
            data[key] = value
    method_name = data.get("method", FewShotConfig.method)
    bench_name = data.get("benchmark", FewShotConfig.benchmark)
    method_spec = _episodic_method(method_name)
    bench_spec = registry.get("benchmark", bench_name)
    method_fields = field_names(method_spec.config) if method_spec.config else []
    bench_fields = [f for f in (field_names(bench_spec.config) if bench_spec.config else []) if f != "seed"]
    for key, value in (overrides or {}).items():
        homes = [name for name, fields in (("top", TOP_LEVEL), ("method_config", method_fields),
                                           ("benchmark_config", bench_fields)) if key in fields]
        if not homes:
            allowed = sorted(set(TOP_LEVEL) | set(method_fields) | set(bench_fields))
            raise ConfigError(f"unknown config key {key!r} for {method_name} on {bench_name}; allowed keys: "
                              f"{', '.join(allowed)}")
        if "top" in homes:  # the episode shape is the engine's; a method's own n_way etc. are for streams
            homes = ["top"]
        if len(homes) > 1:
            raise ConfigError(f"--set {key}: ambiguous, {' and '.join(homes)} both have it; write "
                              f"{homes[-1]}.{key}")
        data = deep_merge(data, {key: value} if homes[0] == "top" else {homes[0]: {key: value}})
    config = build_config(FewShotConfig, data)
    if method_spec.config is not None and not isinstance(config.method_config, method_spec.config):
        config.method_config = build_config(method_spec.config, config.method_config or {}, prefix="method_config.")
    if bench_spec.config is not None and not isinstance(config.benchmark_config, bench_spec.config):
        config.benchmark_config = build_config(bench_spec.config, {**(config.benchmark_config or {}),
                                                                    "seed": config.seed}, prefix="benchmark_config.")
    return config


def _episodic_method(name: str) -> registry.PluginSpec:
    spec = registry.get("strategy", name)
    factory = spec.factory
    if not (isinstance(factory, type) and issubclass(factory, EpisodicLearner)):
        takers = [s.name for s in registry.list_plugins("strategy")
                  if isinstance(s.factory, type) and issubclass(s.factory, EpisodicLearner)]
        raise ConfigError(f"method {name!r} does not learn from episodes; few-shot methods: {', '.join(takers)}")
    return spec


def episode_accuracy(learner: EpisodicLearner, episode: Episode) -> float:
    """Fraction of the episode's queries whose highest logit is their class."""
    logits = learner.episode_logits(episode)
    return float((logits.argmax(dim=1).cpu() == episode.query_y).float().mean())


def evaluate_episodes(learner: EpisodicLearner, sample: Callable[[int], Episode], n: int) -> list[float]:
    """Accuracy of each of the episodes 0..n-1."""
    return [episode_accuracy(learner, sample(i)) for i in range(n)]


def run_fewshot(config: FewShotConfig, *, out: str | Path, progress: bool = False) -> dict[str, Any]:
    """Meta-train, select on validation, test; write ``out/results.json`` (atomically) and return it."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; choose another path")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    pool = load_pool(config.benchmark, config.benchmark_config, config.seed)
    counts = split_counts(len(pool.classes), config.n_way, config.train_classes, config.val_classes,
                          config.test_classes)
    split = split_classes(pool.classes, counts, config.seed)
    episodes = samplers(pool, split, n_way=config.n_way, k_shot=config.k_shot, n_query=config.n_query,
                        seed=config.seed)
    seed_everything(config.seed)
    learner = _episodic_method(config.method).factory(
        config.method_config, RunContext(stream=pool.stream, device=device, seed=config.seed))
    with folder_lock(out_dir, "--out"):
        t0 = time.perf_counter()
        curve, best = _meta_train(learner, config, episodes, progress)
        if best is not None:
            learner.model.load_state_dict(best["state"])
        train_s = time.perf_counter() - t0
        accs = evaluate_episodes(learner, episodes["test"].episode, config.test_episodes)
        mean, ci = mean_ci95(accs)
        results = {
            "method": config.method, "benchmark": config.benchmark, "seed": config.seed,
            "n_way": config.n_way, "k_shot": config.k_shot, "n_query": config.n_query,
            "classes": split, "class_names": pool.stream.names_in_order(),
            "test": {"episodes": len(accs), "accuracy": mean, "ci95": ci, "per_episode": accs},
            "validation": curve, "selected_after_episodes": best["episode"] if best else config.train_episodes,
            "cost_per_episode": learner.episode_cost(episodes["test"].episode(0)),
            "train_time_s": train_s, "wall_time_s": time.perf_counter() - t0, "device": str(device),
            "config": to_dict(config), "method_summary": learner.summary(), "versions": package_versions(),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        with user_os_errors("cannot write the results to", out_dir):
            atomic_write_text(out_dir / "results.json", to_json(results) + "\n")
    return results


def _meta_train(learner: EpisodicLearner, config: FewShotConfig, episodes: dict[str, Any],
                progress: bool) -> tuple[list[dict[str, float]], dict[str, Any] | None]:
    """The meta-training loop; the validation curve and the best state (None without validation classes)."""
    curve: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    losses: list[float] = []
    has_val = "val" in episodes and config.val_episodes > 0
    for i in range(config.train_episodes):
        seed_everything(step_seed(config.seed, i))
        losses.append(learner.train_episode(episodes["train"].episode(i)))
        last = i + 1 == config.train_episodes
        if (i + 1) % config.val_every and not last:
            continue
        point = {"episode": i + 1, "train_loss": sum(losses) / len(losses)}
        losses = []
        if has_val:
            point["val_accuracy"] = mean_ci95(evaluate_episodes(learner, episodes["val"].episode,
                                                                config.val_episodes))[0]
            if best is None or point["val_accuracy"] > best["accuracy"]:
                best = {"episode": i + 1, "accuracy": point["val_accuracy"],
                        "state": copy.deepcopy(learner.model.state_dict())}
        curve.append(point)
        if progress:
            import sys

            print(" ".join(f"{k}={v:.4g}" for k, v in point.items()), file=sys.stderr)
    return curve, best
