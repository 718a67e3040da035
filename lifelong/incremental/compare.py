"""Many runs of a comparison: every (strategy, seed) pair, serially or in a pool of worker processes.

``compare --jobs N`` forks its workers from the process that has already imported torch, Avalanche and the
plugins, so a worker starts in milliseconds instead of re-importing them (docs/scaling.md, "Speed"). One run is
``run.run_experiment``; this module only schedules runs, collects their results and writes the summary.
``compare --backend ray`` hands the runs to Ray instead (``ray_backend``), one task per (strategy, seed).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from lifelong.incremental import ray_backend
from lifelong.incremental.checkpoint import CHECKPOINT_NAME
from lifelong.incremental.results import summarise, write_summary
from lifelong.incremental.run import (
    TOP_LEVEL_KEYS,
    RunConfig,
    config_fields,
    plugin_names,
    resolve_config,
    run_experiment,
)
from lifelong.platform import registry
from lifelong.platform.atomic import atomic_write_text, folder_lock
from lifelong.platform.config import ConfigError, load_yaml, to_dict
from lifelong.platform.errors import UserError, user_os_errors


class RunFailed(Exception):
    """One run of a comparison failed: the message names the run (strategy, seed) and why, in one line.

    ``user_error`` says whether the cause was bad input (a ``UserError``: exit 2) or something else (exit 1; its
    traceback is in ``traceback_file``)."""

    def __init__(self, message: str, *, user_error: bool, traceback_file: Path | None = None):
        super().__init__(message)
        self.user_error = user_error
        self.traceback_file = traceback_file


def compare(
    strategies: list[str] | None,
    benchmark: str | None,
    seeds: list[int],
    *,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    jobs: int = 1,
    threads: int = 1,
    device: str | None = None,
    progress: bool = True,
    resume: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Run every (strategy, seed) pair and write summary.json / summary.csv / comparison.png to ``out``.

    ``config_file`` is honoured exactly as ``run`` honours it (``comparison_configs``): one file, a folder of
    files, or a name (``configs/<strategy>/NAME.yaml``), one config per strategy. Every run uses ``threads``
    intra-op torch threads, whether the runs go one after the other or in ``jobs`` parallel processes: float
    reductions then happen in the same order, so both give the same summary, bit for bit (and ``run``, whose
    default is the same one thread, gives the same numbers too). With several GPUs and ``device=auto``, parallel
    jobs take them in turn. A strategy or seed named twice is refused (the pair would run twice into one folder).
    ``resume`` continues every pair from the checkpoint in its folder, where there is one. The first run that
    fails stops the comparison with ``RunFailed``. ``backend="ray"`` runs each pair as a Ray task instead
    (``ray_backend``: a local Ray instance, or the cluster at ``address``), with the same summary.
    """

    out = Path(out)
    _check_backend(backend, address, jobs)
    for flag, values in (("--strategies", strategies or []), ("--seeds", seeds)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise UserError(f"{flag}: {', '.join(twice)} given more than once; name each once")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another path")
    configs = comparison_configs(strategies, benchmark, seeds, config_file=config_file, overrides=overrides,
                                 device=device)
    benchmark = configs[0].benchmark
    if jobs > 1:
        configs = _spread_over_gpus(configs)
    with folder_lock(out, "--out"):  # one comparison per folder; each run also locks its own folder
        if backend == "ray":
            runs = ray_backend.run_on_ray(configs, out, run_one=_run_one, check=_checked, threads=threads,
                                          resume=resume, address=address,
                                          report=lambda result, done, total: _report(result, done, total, progress))
        else:
            runs = _run_many(configs, out, jobs, threads, progress, resume)
        summary = summarise(runs)
        with user_os_errors("cannot write the summary to", out):
            write_summary(out, benchmark, summary)
    return summary


BACKENDS = ("local", "ray")


def _check_backend(backend: str, address: str | None, jobs: int) -> None:
    """Refuse a backend option that does not fit the backend, in one line."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: unknown; allowed: {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise UserError("--address names a Ray cluster: give it with --backend ray")
    if backend == "ray" and jobs > 1:
        raise UserError("--jobs: with --backend ray, Ray decides how many runs go at once (each takes --threads "
                        "CPUs); leave out --jobs")


CONFIG_ROOT = Path("configs")  # where ``--config NAME`` looks first (then beside the package: a source checkout)


def config_files(config: str | Path | None, strategies: list[str] | None) -> dict[str, Path | None]:
    """The config file of each strategy of a comparison, in order: ``config`` is one YAML file (for the strategy
    it names, or for all when it names none), a folder of YAML files (one per strategy, each naming its
    strategy or named after it), or a name (``configs/<strategy>/NAME.yaml`` for each strategy; without
    ``strategies``, every strategy that has one). A ``--strategies`` list that contradicts the files is refused."""
    if config is None:
        if not strategies:
            raise UserError("--strategies: give at least one strategy name (or --config with a strategy)")
        return {s: None for s in strategies}
    path = Path(config)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        named = load_yaml(path).get("strategy")
        if named and strategies and list(strategies) != [named]:
            raise ConfigError(f"--strategies {','.join(strategies)} contradicts {path}, which says strategy: {named}; "
                              f"for one config per strategy give a folder or a name (configs/<strategy>/NAME.yaml)")
        if not named and not strategies:
            raise ConfigError(f"{path} names no strategy: give --strategies or add 'strategy:' to the file")
        return {s: path for s in (strategies or [named])}
    if path.is_dir():
        found: dict[str, Path] = {}
        for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
            name = load_yaml(file).get("strategy") or file.stem
            if name in found:
                raise ConfigError(f"--config {path}: two files for strategy {name} ({found[name].name}, {file.name}); "
                                  f"keep one per strategy")
            found[name] = file
        return _pick(found, strategies, f"folder {path}")
    if len(path.parts) != 1:
        raise ConfigError(f"--config {config}: no such file or folder")
    roots = [CONFIG_ROOT, Path(__file__).resolve().parents[2] / "configs"]
    root = next((r for r in roots if any(r.glob(f"*/{config}.yaml"))), None)
    if root is None:
        raise ConfigError(f"--config {config}: no such file or folder, and no configs/<strategy>/{config}.yaml "
                          f"(looked in {', '.join(str(r) for r in roots)})")
    found = {file.parent.name: file for file in sorted(root.glob(f"*/{config}.yaml"))}
    return _pick(found, strategies, f"{root}/<strategy>/{config}.yaml")


def _pick(found: dict[str, Path], strategies: list[str] | None, where: str) -> dict[str, Path | None]:
    if not found:
        raise ConfigError(f"--config: no YAML config in {where}")
    missing = [s for s in strategies or [] if s not in found]
    if missing:
        raise ConfigError(f"--config: no config for {', '.join(missing)} in {where}; it has: {', '.join(found)}")
    return {s: found[s] for s in (strategies or found)}


def comparison_configs(strategies: list[str] | None, benchmark: str | None, seeds: list[int], *,
                       config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                       device: str | None = None) -> list[RunConfig]:
    """Every run of a comparison, resolved as ``run`` resolves one (``resolve_config``: the file's benchmark,
    keys valid for that benchmark, a ``--benchmark`` that contradicts the file refused), seed by seed.

    A ``--set`` key goes to the runs whose strategy or benchmark has it and must fit at least one. The runs of
    one seed must share one benchmark and one benchmark setting (a comparison on two data splits compares
    nothing), else the first difference is named with the ``--set`` that settles it."""
    files = config_files(config_file, strategies)
    overrides = overrides or {}
    benchmarks = {s: benchmark or (load_yaml(f).get("benchmark") if f else None) or "split-digits"
                  for s, f in files.items()}
    per_strategy = {s: set(TOP_LEVEL_KEYS) | set(config_fields("benchmark", benchmarks[s]))
                    | set(config_fields("strategy", s)) for s in files}
    for s in files:  # components=[..] and kd.alpha=..: the keys of training components, where accepted
        if registry.get("strategy", s).capabilities.accepts_components:
            per_strategy[s] |= {"components", *plugin_names("component")}
    unusable = [k for k in overrides if not any(k in keys for keys in per_strategy.values())]
    if unusable:
        raise ConfigError(f"unknown config key {unusable[0]!r}: neither {', '.join(sorted(set(benchmarks.values())))} "
                          f"nor any of {', '.join(files)} has it")
    configs = [  # seed by seed: consecutive runs share one stream (build_stream); the summary's order is unchanged
        resolve_config(strategy=s, benchmark=benchmark, config_file=f, seed=seed, device=device,
                       overrides={k: v for k, v in overrides.items() if k in per_strategy[s]})
        for seed in seeds
        for s, f in files.items()
    ]
    _same_benchmark(configs)
    return configs


def _same_benchmark(configs: list[RunConfig]) -> None:
    """Refuse runs of one comparison on different benchmarks or benchmark settings, naming the first difference."""
    first = configs[0]
    for other in configs[1:]:
        if other.benchmark != first.benchmark:
            raise ConfigError(f"the configs of {first.strategy} and {other.strategy} name different benchmarks "
                              f"({first.benchmark}, {other.benchmark}); a comparison runs on one")
        a, b = to_dict(first.benchmark_config), to_dict(other.benchmark_config)
        for key in sorted((set(a) | set(b)) - {"seed"}):  # the seed is the comparison's axis
            if a.get(key) != b.get(key):
                raise ConfigError(f"the configs of {first.strategy} and {other.strategy} set {first.benchmark}'s "
                                  f"{key} differently ({a.get(key)!r}, {b.get(key)!r}); a comparison needs one "
                                  f"setting: add --set {key}=VALUE")


def _run_dir(out: Path, config: RunConfig) -> Path:
    return out / f"{config.strategy}-seed{config.seed}"


def _run_one(config: RunConfig, out: Path, progress: bool, resume: bool = False) -> dict[str, Any]:
    """One run of a comparison; a failure comes back as ``{"failed": one line, ...}`` rather than raised, so a
    worker process never sends its traceback through the pool."""
    # the runs of a comparison share one parent folder (``out``), so each logger sees one run per pair
    run_dir = _run_dir(out, config)
    try:
        return run_experiment(config, out=run_dir, progress=progress, log_group=out.name,
                              resume=resume and (run_dir / CHECKPOINT_NAME).exists())
    except UserError as exc:
        return {"failed": f"run {config.strategy} seed {config.seed} failed: {exc}", "user_error": True}
    except Exception as exc:  # a bug or the environment: one line here, the traceback in a file
        log = run_dir / "error.log"
        try:
            atomic_write_text(log, traceback.format_exc())
        except OSError:
            log = None
        first = (str(exc).strip().splitlines() or [""])[0]
        where = f"; traceback in {log}" if log else ""
        return {"failed": f"run {config.strategy} seed {config.seed} failed with {type(exc).__name__}: {first}{where}",
                "user_error": False, "traceback_file": str(log) if log else None}


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if "failed" in result:
        log = result.get("traceback_file")
        raise RunFailed(result["failed"], user_error=result["user_error"], traceback_file=Path(log) if log else None)
    return result


def _run_many(configs: list[RunConfig], out: Path, jobs: int, threads: int, progress: bool,
              resume: bool = False) -> list[dict[str, Any]]:
    import torch

    if jobs <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs = []
            for config in configs:
                runs.append(_checked(_run_one(config, out, progress, resume)))
                _report(runs[-1], len(runs), len(configs), progress)
            return runs
        finally:
            torch.set_num_threads(previous)
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = _pool_context()
    # the first failure ends the comparison: runs not started are cancelled, runs under way finish (their
    # results stay in their folders for --resume)
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(configs))), mp_context=context, initializer=_start_worker,
                             initargs=(threads, context.get_start_method() != "fork")) as pool:
        futures = [pool.submit(_run_one, c, out, False, resume) for c in configs]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                _report(_checked(future.result()), done, len(configs), progress)
            return [f.result() for f in futures]
        except BrokenProcessPool:
            lost = [f"{c.strategy} seed {c.seed}" for c, f in zip(configs, futures)
                    if not f.done() or f.exception() is not None]
            raise RunFailed(f"a worker process of the comparison died (killed, or out of memory) while running "
                            f"{lost[0] if lost else 'a run'}; continue with --resume", user_error=False) from None
        finally:
            for future in futures:
                future.cancel()


def _report(result: dict[str, Any], done: int, total: int, progress: bool) -> None:
    """One line on stderr per finished run (strategy, seed, AIA, time, how many remain), so a long comparison is
    never silent until its table."""
    if not progress or "strategy" not in result:
        return
    print(f"{result['strategy']} seed {result['seed']}: AIA "
          f"{100 * result['average_incremental_accuracy']:.2f} %, {result['wall_time_s']:.1f} s "
          f"({done} of {total} runs done, {total - done} remain)", file=sys.stderr, flush=True)


def _preload() -> None:
    """Import what every run needs (torch, Avalanche's training and data code, every plugin), once."""
    import torch  # noqa: F401

    from lifelong.platform.quiet import quiet_avalanche

    with quiet_avalanche():
        import avalanche.benchmarks.utils  # noqa: F401
        import avalanche.training  # noqa: F401
        import avalanche.training.plugins  # noqa: F401
    registry.ensure_loaded()


def _pool_context() -> Any:
    """How ``compare --jobs`` starts its workers.

    On Linux they are forked from this process after ``_preload``: a worker then starts in milliseconds with
    everything imported, where a spawned one spends seconds importing torch and Avalanche again (as long as a
    short run). Forking is not safe once this process has initialised CUDA (a forked child cannot use it), and
    is not offered everywhere: then a fork server that has done the same imports starts the workers (one import
    for the whole comparison), or, where there is none, spawned workers import once each (``_start_worker``)."""
    import multiprocessing as mp

    import torch

    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods and not torch.cuda.is_initialized():
        _preload()
        return mp.get_context("fork")
    if "forkserver" in methods:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["torch", "avalanche.training", __name__])
        return context
    return mp.get_context("spawn")


def _start_worker(threads: int, preload: bool) -> None:
    """A worker's start: its torch threads (the same number as a serial run, so the summaries are identical),
    and the imports, unless it was forked with them done."""
    import torch

    torch.set_num_threads(threads)
    if preload:
        _preload()


def _spread_over_gpus(configs: list[RunConfig]) -> list[RunConfig]:
    """Runs left on ``device=auto`` take the visible GPUs in turn (unchanged with fewer than two GPUs)."""
    import dataclasses

    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return configs
    return [dataclasses.replace(c, device=f"cuda:{k % count}") if c.device == "auto" else c
            for k, c in enumerate(configs)]
