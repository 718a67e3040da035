"""Runs a class-incremental strategy over a stream and fills the accuracy matrix (docs/architecture.md, "a run").

The runner owns the loop: train on experience i, evaluate on every test experience, write an atomic
checkpoint, repeat. Every step is reseeded from the run seed, so a run resumed from its checkpoint gives the
same accuracy matrix as an uninterrupted one. Evaluation is done here, not by the strategy's own evaluator,
so every strategy is measured the same way.

What a run costs beyond training and evaluation is kept small (docs/scaling.md, "Speed"): the stream is built once
per process for a benchmark configuration (``build_stream``), each step's checkpoint is written in the background
while the next step trains (``checkpoint.CheckpointWriter``), and the plots are drawn once, at the end, with Pillow.
Many runs (``compare``) are scheduled by ``compare.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lifelong.incremental import distributed
from lifelong.incremental.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointWriter,
    config_fingerprint,
    load_checkpoint,
    seed_everything,
    step_seed,
)
from lifelong.incremental.distributed import shard_experience, sum_over_ranks
from lifelong.incremental.learner import DistributedInfo, RunContext, unsaved_memory
from lifelong.incremental.loggers import LoggerSet, check_loggers, create_loggers
from lifelong.incremental.metrics import cil_metrics, seen_accuracy
from lifelong.incremental.results import package_versions, seen_curve, write_run
from lifelong.platform import registry
from lifelong.platform.atomic import folder_lock
from lifelong.platform.config import ConfigError, build_config, deep_merge, field_names, load_yaml, to_dict
from lifelong.platform.device import resolve_device
from lifelong.platform.errors import UserError, user_os_errors

TOP_LEVEL_KEYS: tuple[str, ...] = ("strategy", "benchmark", "seed", "device", "loggers", "strategy_config",
                                   "benchmark_config")


@dataclass
class RunConfig:
    """One run, fully resolved: what results.json records under ``config``.

    ``resolve_config`` builds and validates the two plugin configs once, as the plugins' own dataclasses (every
    default filled in; the benchmark's ``seed`` is the run's); the runner hands those objects to the plugins as
    they are. A plain dict is accepted too and is built (and validated) when the run starts. ``loggers`` names
    the run loggers beyond results.json / CSV / plots (``csv``, ``tensorboard``, ``wandb``;
    ``incremental/loggers.py``).
    """

    strategy: str
    benchmark: str
    seed: int = 0
    device: str = "auto"
    loggers: list[str] = field(default_factory=list)
    strategy_config: Any = field(default_factory=dict)
    benchmark_config: Any = field(default_factory=dict)

    def validate(self) -> None:
        self.loggers = check_loggers(self.loggers)

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (the device and the loggers may change)."""
        return {k: v for k, v in to_dict(self).items() if k not in ("device", "loggers")}

    def typed(self) -> "RunConfig":
        """This config with both plugin configs as their typed dataclasses (built and validated here if needed)."""
        strategy_spec = registry.get("strategy", self.strategy)
        bench_spec = _stream_benchmark(self.benchmark)
        strategy_cfg = self.strategy_config
        if strategy_spec.config is not None and not isinstance(strategy_cfg, strategy_spec.config):
            strategy_cfg = build_config(strategy_spec.config, strategy_cfg or {}, prefix="strategy_config.")
        bench_cfg = self.benchmark_config
        if bench_spec.config is not None and not isinstance(bench_cfg, bench_spec.config):
            bench_cfg = build_config(bench_spec.config, {**(bench_cfg or {}), "seed": self.seed},
                                     prefix="benchmark_config.")
        if getattr(bench_cfg, "seed", self.seed) != self.seed:
            bench_cfg = dataclasses.replace(bench_cfg, seed=self.seed)
        return dataclasses.replace(self, strategy_config=strategy_cfg, benchmark_config=bench_cfg)


def _stream_benchmark(name: str) -> registry.PluginSpec:
    """The benchmark ``name``, refused by kind when it is not a class-incremental stream."""
    spec = registry.get("benchmark", name)
    if spec.produces != "stream":
        streams = [s.name for s in registry.list_plugins("benchmark") if s.produces == "stream"]
        raise ConfigError(f"benchmark {name!r} produces {spec.produces}, not a class-incremental stream; "
                          f"`run` and `compare` take one of: {', '.join(streams)}"
                          + (" (preference pairs are for `lifelong reward train|eval`)"
                             if spec.produces == "preference-pairs" else ""))
    return spec


def route_overrides(flat: dict[str, Any], strategy: str, benchmark: str) -> dict[str, Any]:
    """Put ``--set`` keys where they belong: top-level keys stay, other keys go to the one config that has them."""
    strategy_fields = config_fields("strategy", strategy)
    benchmark_fields = config_fields("benchmark", benchmark)
    routed: dict[str, Any] = {}
    for key, value in flat.items():
        if key in TOP_LEVEL_KEYS:
            routed = deep_merge(routed, {key: value})
            continue
        if key == "components" or (key not in strategy_fields and key in plugin_names("component")):
            if not registry.get("strategy", strategy).capabilities.accepts_components:
                takers = [s.name for s in registry.list_plugins("strategy") if s.capabilities.accepts_components]
                raise ConfigError(f"--set {key}: strategy {strategy} does not accept training components; "
                                  f"strategies that do: {', '.join(takers)}")
            if key == "components":  # --set components=kd,esl as well as components=[kd,esl]
                value = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            else:  # --set kd.alpha=0.5: the options of component kd
                key, value = "component_config", {key: value}
            routed = deep_merge(routed, {"strategy_config": {key: value}})
            continue
        in_strategy, in_benchmark = key in strategy_fields, key in benchmark_fields
        if in_strategy and in_benchmark:
            raise ConfigError(f"--set {key}: ambiguous, both {strategy} and {benchmark} have it; write strategy_config.{key} or benchmark_config.{key}")
        if not (in_strategy or in_benchmark):
            allowed = sorted(set(TOP_LEVEL_KEYS) | set(strategy_fields) | set(benchmark_fields))
            raise ConfigError(f"unknown config key {key!r} for strategy {strategy} on {benchmark}; allowed keys: {', '.join(allowed)}")
        section = "strategy_config" if in_strategy else "benchmark_config"
        routed = deep_merge(routed, {section: {key: value}})
    return routed


def plugin_names(kind: str) -> set[str]:
    return {s.name for s in registry.list_plugins(kind)}


def config_fields(kind: str, name: str) -> list[str]:
    spec = registry.get(kind, name)
    return field_names(spec.config) if spec.config else []


def resolve_config(
    *,
    strategy: str | None = None,
    benchmark: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> RunConfig:
    """Merge a YAML file, ``--set`` overrides and explicit flags into one validated ``RunConfig``."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    for flag, given in (("strategy", strategy), ("benchmark", benchmark)):  # the file is honoured, never overridden
        if given and data.get(flag) and given != data[flag]:
            raise ConfigError(f"--{flag} {given} contradicts {config_file}, which says {flag}: {data[flag]}; "
                              f"drop --{flag} or use a config file for {given}")
    strategy = strategy or data.get("strategy")
    benchmark = benchmark or data.get("benchmark") or "split-digits"
    if not strategy:
        raise ConfigError("no strategy given: use --strategy NAME or a config file with 'strategy:'")
    for key, name in (("strategy", strategy), ("benchmark", benchmark)):
        if not isinstance(name, str):
            raise ConfigError(f"{key}: expected a plugin name, got {name!r}")
    registry.get("strategy", strategy)
    _stream_benchmark(benchmark)
    if unknown:  # flat keys in a file are routed like --set keys
        data = deep_merge({k: v for k, v in data.items() if k in TOP_LEVEL_KEYS},
                          route_overrides({k: data[k] for k in unknown}, strategy, benchmark))
    if overrides:
        data = deep_merge(data, route_overrides(overrides, strategy, benchmark))
    data["strategy"], data["benchmark"] = strategy, benchmark
    if seed is not None:
        data["seed"] = seed
    if device is not None:
        data["device"] = device
    if isinstance(data.get("loggers"), str):  # --set loggers=tensorboard or loggers=tensorboard,csv
        data["loggers"] = [name.strip() for name in data["loggers"].split(",") if name.strip()]
    elif data.get("loggers") is None and "loggers" in data:  # --set loggers=null, loggers: (empty in YAML)
        data["loggers"] = []
    for section in ("strategy_config", "benchmark_config"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a mapping of keys and values, got {data[section]!r}")
    # both plugin configs are built and validated now, once, before any work starts
    return build_config(RunConfig, data).typed()


def default_out_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.strategy}-{config.benchmark}-{config.seed}"


def evaluate(learner: Any, experience: Any, batch_size: int, device: Any, dist: Any = None) -> float:
    """Top-1 accuracy of ``learner.predict`` on one test experience (each rank counts its shard, then the
    counts are summed, so every rank gets the accuracy on the whole test set)."""
    import torch
    from torch.utils.data import DataLoader


    dist = dist or DistributedInfo()
    experience = shard_experience(experience, dist, pad=False)
    dataset = experience.dataset.eval() if hasattr(experience.dataset, "eval") else experience.dataset
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x, y = batch[0].to(device), batch[1].to(device)
        with torch.no_grad():
            pred = learner.predict(x).argmax(dim=1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    correct, total = sum_over_ranks([correct, total], dist, device)
    return correct / max(total, 1)


def training_loss(learner: Any, experience: Any, batch_size: int, device: Any, dist: Any = None) -> float:
    """Mean cross-entropy of ``learner.predict`` on a training experience (eval transforms, every rank its
    shard, summed): what the loggers record as ``loss_after_experience``. For learners whose ``predict`` gives
    scores other than logits (iCaRL's nearest mean of exemplars) it is the cross-entropy of those scores."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    dist = dist or DistributedInfo()
    experience = shard_experience(experience, dist, pad=False)
    dataset = experience.dataset.eval() if hasattr(experience.dataset, "eval") else experience.dataset
    loss_sum, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x, y = batch[0].to(device), batch[1].to(device)
        with torch.no_grad():
            loss_sum += float(F.cross_entropy(learner.predict(x).float(), y, reduction="sum"))
        count += int(y.numel())
    loss_sum, count = sum_over_ranks([loss_sum, count], dist, device)
    return loss_sum / max(count, 1)


def _progress(iterable: Iterable[int], total: int, desc: str, enabled: bool) -> Iterable[int]:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def run_experiment(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log_group: str | None = None,
) -> dict[str, Any]:
    """Run one strategy on one stream; returns the results dict that is also written to ``out``.

    ``stop_after`` ends the run after that many experiences (leaving a checkpoint): what an interrupted run
    looks like, for tests and for splitting long runs. The run's ``loggers`` write under ``out/logs`` (rank 0
    only), opened once the stream and the learner are built, so bad input writes nothing; ``log_group`` names
    the group of runs for loggers that have one (W&B; ``compare`` passes its output folder's name).
    """

    config = config.typed()
    out_dir = Path(out) if out else default_out_dir(config)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; choose another path")
    device = resolve_device(config.device)
    fingerprint = config_fingerprint(config.identity())
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if resume and not checkpoint_path.exists():
        raise UserError(f"--resume: no checkpoint in {out_dir} (expected {checkpoint_path})")

    seed_everything(config.seed)
    strategy_cfg = config.strategy_config
    stream = build_stream(config.benchmark, config.benchmark_config)
    seed_everything(config.seed)  # the learner starts from the same random state whether the stream was cached or not

    dist = distributed.current_distributed_info()
    strategy_spec = registry.get("strategy", config.strategy)
    if strategy_spec.capabilities.needs_task_labels and not stream.info.get("task_labels_meaningful", False):
        raise UserError(f"strategy {config.strategy} needs task labels, which the class-incremental stream {config.benchmark} does not provide")
    if dist.enabled and not strategy_spec.capabilities.distributed_safe:
        raise UserError(f"strategy {config.strategy} is not distributed_safe; run it in a single process")
    if dist.enabled and getattr(strategy_cfg, "batch_size", 0) % dist.world_size:
        raise UserError(f"batch_size {strategy_cfg.batch_size} is the global batch and must divide by the "
                        f"{dist.world_size} processes")
    # one writer per run folder (rank 0 writes for all ranks); leftovers of a killed writer are removed
    with folder_lock(out_dir, "--out") if dist.is_main else contextlib.nullcontext():
        state = _load_resume_state(checkpoint_path, fingerprint, stream.n_experiences) if resume else None
        return _run_locked(config, out_dir, state, stream, dist, strategy_spec, device, fingerprint,
                           checkpoint_path, progress, stop_after, log_group)


_STREAMS: dict[str, Any] = {}  # the last stream built in this process, by its benchmark configuration


def build_stream(benchmark: str, benchmark_config: Any) -> Any:
    """The stream of ``benchmark`` with this configuration, built once per process and then reused.

    Building means reading and splitting the data set, which every run of a comparison or a benchmark loop would
    otherwise repeat for the same seed. Streams are read-only for the runner and the strategies (they train on
    experiences and build their own buffers and views; ``tests/test_every_strategy.py`` checks every strategy
    leaves the stream as it found it), so one object serves every run. Only the last stream is kept, so a process
    never holds more than one data set beyond the one in use; ``compare`` orders its runs seed by seed, which
    makes consecutive runs share theirs."""
    key = config_fingerprint({"benchmark": benchmark, "config": to_dict(benchmark_config)})
    if key not in _STREAMS:
        _STREAMS.clear()  # let the previous one go before the next is built
        _STREAMS[key] = registry.get("benchmark", benchmark).factory(benchmark_config)
    return _STREAMS[key]


def _load_resume_state(path: Path, fingerprint: str, n: int) -> dict[str, Any]:
    """The checkpoint to resume from, refused in one line when it is unusable or from another configuration."""
    state = load_checkpoint(path)
    if state["fingerprint"] != fingerprint:
        described = state.get("config") if isinstance(state.get("config"), dict) else {}
        raise UserError(
            f"--resume: {path.parent} holds a run of another configuration "
            f"({described.get('strategy')} on {described.get('benchmark')}, "
            f"seed {described.get('seed')}); use another --out or the same configuration"
        )
    completed, matrix = state["completed"], state["accuracy_matrix"]
    if not 0 <= completed <= n or len(matrix) < completed or any(
            not isinstance(row, list) or len(row) != n for row in matrix[:completed]):
        raise UserError(f"checkpoint {path}: {completed} completed experiences and a {len(matrix)}-row accuracy "
                        f"matrix do not fit a stream of {n} experiences")
    return state


def _run_locked(config: RunConfig, out_dir: Path, state: dict[str, Any] | None, stream: Any, dist: Any,
                strategy_spec: registry.PluginSpec, device: Any, fingerprint: str, checkpoint_path: Path,
                progress: bool, stop_after: int | None, log_group: str | None) -> dict[str, Any]:
    """The rest of ``run_experiment``, with the run folder's lock held."""
    strategy_cfg = config.strategy_config
    device = distributed.setup(dist, device)


    context = RunContext(stream=stream, device=device, seed=config.seed, distributed=dist)
    learner = strategy_spec.factory(strategy_cfg, context)
    n = stream.n_experiences
    matrix = np.zeros((n, n))
    start, elapsed, divergence = 0, 0.0, 0.0
    resumed: list[int] = []
    if state is not None:
        missing = unsaved_memory(learner, strategy_spec.capabilities.uses_replay_memory)
        if missing:
            raise UserError(f"--resume: strategy {config.strategy} keeps a memory (uses_replay_memory) but does not "
                            f"save it (no {' / '.join(missing)}); resuming would continue with an empty memory, so "
                            f"run it again without --resume, or give the strategy {' and '.join(missing)}")
        earlier = state.get("resumed_from")
        earlier = [int(k) for k in earlier if isinstance(k, int)] if isinstance(earlier, list) else []
        resumed = [*earlier, int(state["completed"])]
        learner_state = dict(state["learner"])
        if state.get("world_size", 1) != dist.world_size:
            raise UserError(f"--resume: the checkpoint in {out_dir} was written by a run of {state.get('world_size', 1)} "
                            f"process(es); resume it with the same number (now {dist.world_size})")
        if "rank_extra" in state:  # replay buffers and other per-rank strategy state
            learner_state["extra"] = state["rank_extra"][dist.rank]
        try:
            learner.load_state_dict(learner_state)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(f"checkpoint {checkpoint_path}: its learner state does not load into "
                            f"{config.strategy} ({type(exc).__name__}: {first})") from None
        start = int(state["completed"])
        matrix[:start] = np.asarray(state["accuracy_matrix"])[:start]
        elapsed = float(state["wall_time_s"])
        divergence = float(state.get("replica_divergence", 0.0))
    test_sizes = [len(stream.test_stream[j].dataset) for j in range(n)]
    eval_batch = getattr(strategy_cfg, "eval_batch_size", 256)
    end = n if stop_after is None else min(n, start + stop_after)
    logs = LoggerSet([])
    if config.loggers and dist.is_main:
        logs = create_loggers(config.loggers, out_dir, to_dict(config), n_experiences=n, start=start,
                              steps=(state or {}).get("log_steps"), group=log_group)
        context.metric_sink = logs.report
    writer = CheckpointWriter()
    written = False
    try:
        results = _run_steps(config, learner, stream, dist, device, matrix, test_sizes, eval_batch, start, end,
                             elapsed, divergence, fingerprint, checkpoint_path, progress, logs, writer, resumed)
        if results is not None and dist.is_main:
            # the last checkpoint is still being written while the plots are drawn; results.json waits for it
            with user_os_errors("cannot write the results of the run to", out_dir):
                write_run(out_dir, results, before_json=lambda: _wait_for(writer, checkpoint_path))
            logs.finish(results)
        _wait_for(writer, checkpoint_path)
        written = True
    finally:
        if not written:  # failing anyway: the checkpoint under way still ends before the folder's lock is let go
            with contextlib.suppress(Exception):
                writer.wait()
        logs.close()
        context.metric_sink = None
    return results if results is not None else {"completed": end, "accuracy_matrix": matrix[:end].tolist()}


def underfit_warning(config: RunConfig, experience: int) -> str:
    """The warning of a step whose own test data scores 0 %: the model did not learn what it was just shown
    (typically one epoch, or a learning rate too small for the backbone), so the run's numbers say little."""
    epochs = getattr(config.strategy_config, "epochs", None)
    lr = getattr(config.strategy_config, "lr", None)
    return (f"after training experience {experience}, {config.strategy} scores 0 % on that experience's own test "
            f"data: the model underfits (epochs={epochs}, lr={lr}); raise them (--set epochs=N, --set lr=X)")


def _torch_threads() -> int:
    """The intra-op torch threads the run trained with: float sums, and so the last digits, depend on it."""
    import torch

    return torch.get_num_threads()


def _wait_for(writer: CheckpointWriter, checkpoint_path: Path) -> None:
    with user_os_errors("cannot write the checkpoint", checkpoint_path):
        writer.wait()


def _run_steps(config: RunConfig, learner: Any, stream: Any, dist: Any, device: Any, matrix: np.ndarray,
               test_sizes: list[int], eval_batch: int, start: int, end: int, elapsed: float, divergence: float,
               fingerprint: str, checkpoint_path: Path, progress: bool, logs: LoggerSet,
               writer: CheckpointWriter, resumed: list[int]) -> dict[str, Any] | None:
    """Experiences ``start`` to ``end`` of ``run_experiment``; the results when the stream is complete (each
    step's checkpoint may still be being written by ``writer`` when this returns). ``resumed`` lists the
    experiences the run was resumed at (empty for an uninterrupted run): the checkpoints and results.json keep it."""
    n = stream.n_experiences
    notes: list[str] = []
    for i in _progress(range(start, end), end - start, f"{config.strategy} on {config.benchmark}", progress):
        t0 = time.perf_counter()
        logs.experience = i
        seed_everything(step_seed(config.seed, i))
        learner.train_experience(distributed.shard_experience(stream.train_stream[i], dist))
        divergence = max(divergence, distributed.synchronise_replicas(learner.model, dist, device))
        matrix[i] = [evaluate(learner, stream.test_stream[j], eval_batch, device, dist) for j in range(n)]
        elapsed += time.perf_counter() - t0
        if matrix[i][i] == 0.0 and dist.is_main:
            notes.append(underfit_warning(config, i))
            print(f"lifelong: warning: {notes[-1]}", file=sys.stderr, flush=True)
        if config.loggers:  # every rank takes part in the loss (its shard), rank 0 records it
            loss = training_loss(learner, stream.train_stream[i], eval_batch, device, dist)
            logs.log_experience(i, matrix[i].tolist(), seen_accuracy(matrix, i, test_sizes), loss, elapsed)
        learner_state = learner.state_dict()
        # the model is the same on every rank (DDP); strategy state such as a replay buffer is per rank
        rank_extra = distributed.gather_to_main(learner_state["extra"], dist) if dist.enabled else None
        if dist.is_main:
            with user_os_errors("cannot write the checkpoint", checkpoint_path):
                writer.submit(checkpoint_path, {
                    "fingerprint": fingerprint,
                    "config": to_dict(config),
                    "completed": i + 1,
                    "accuracy_matrix": matrix[: i + 1].tolist(),
                    "wall_time_s": elapsed,
                    "world_size": dist.world_size,
                    "replica_divergence": divergence,
                    "resumed_from": resumed,
                    "learner": learner_state,
                    **({"rank_extra": rank_extra} if rank_extra is not None else {}),
                    **({"log_steps": logs.state()["steps"]} if logs else {}),
                })
    distributed.teardown(dist)
    if end < n:
        return None
    return {
        "strategy": config.strategy,
        "benchmark": config.benchmark,
        "seed": config.seed,
        "class_order": stream.class_order,
        "classes_per_experience": stream.classes_per_experience,
        "accuracy_matrix": matrix.tolist(),
        "seen_accuracy": seen_curve(matrix, test_sizes),
        "test_sizes": test_sizes,
        **cil_metrics(matrix, test_sizes),
        "wall_time_s": elapsed,
        "device": str(device),
        "threads": _torch_threads(),
        "warnings": notes,
        "resumed": bool(resumed),
        "resumed_from": resumed,
        "world_size": dist.world_size,
        **({"replica_divergence": divergence} if dist.enabled else {}),
        "config": to_dict(config),
        "strategy_summary": learner.summary(),
        "versions": package_versions(),
    }
