"""``compare --backend ray``: each (strategy, seed) run of a comparison as one Ray task, on this machine or a cluster.

Ray (https://docs.ray.io) is what sweeps in this field run on; this module only maps a comparison onto it. Each
run is one task asking for ``--threads`` CPUs and, where it trains on a GPU, one GPU, so Ray's scheduler decides
how many runs go at once on each node. A task runs ``compare._run_one`` (the same call as a serial run, with the
same torch threads, so the summary is the serial one bit for bit) in a temporary folder on its node and sends
back the result and the files of its run folder; the driver writes them into ``OUT/<strategy>-seed<seed>/``.
Choices where Ray leaves it open: nodes need not share a file system (the files travel as task results; with
``--resume`` the driver sends a run's folder, checkpoint included, to the task that continues it); the driver
never waits on an address that does not answer (a TCP check with a bounded timeout before ``ray.init``, which
itself would retry for minutes); a local instance started here is shut down at the end, a cluster is left as found.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from lifelong.incremental.checkpoint import CHECKPOINT_NAME
from lifelong.platform.atomic import atomic_write_bytes, folder_lock
from lifelong.platform.errors import UserError, user_os_errors

CONNECT_TIMEOUT_S = 5.0  # how long the driver waits for a cluster's address to answer before refusing it
RunOne = Callable[..., dict[str, Any]]  # compare._run_one(config, out, progress, resume) -> result


def import_ray() -> Any:
    """Ray, or a one-line refusal naming how to install it (it is an optional dependency)."""
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"--backend ray: Ray cannot be imported ({exc}); install it with "
                        f"pip install 'lifelong[ray]', or leave out --backend ray") from None
    return ray


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line and within ``timeout_s``, a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``)
    that nothing answers on; ``auto`` (the cluster ``ray start`` left on this machine) is left to Ray."""
    if address == "auto":
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (the head node's `ray start --head` port, "
                        f"6379 by default), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there within {timeout_s:.0f} s ({exc}); "
                        f"start one with `ray start --head` on the head node") from None


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local instance; True when this call started Ray."""
    if address is not None:
        check_address(address)
    if ray.is_initialized():  # a caller's own ray.init (a notebook, a test): use it, leave it running
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="ERROR",
                 configure_logging=True)
    except ConnectionError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"--address {address}: {first}") from None
    return True


def _gpus(ray: Any, device: str) -> float:
    """GPUs one run asks Ray for: one where it trains on a GPU (``cuda``, or ``auto`` on a cluster with GPUs)."""
    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if device.startswith("cuda:"):
        raise UserError(f"--device {device}: with --backend ray, Ray gives each run its GPU; use --device cuda or auto")
    if device == "cuda" and not has_gpu:
        raise UserError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    return 1.0 if device != "cpu" and has_gpu else 0.0


def _folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under a run folder, by its path relative to the folder (its lock aside)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run_task(run_one: RunOne, config: Any, group: str, threads: int, sent: dict[str, bytes] | None
             ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One run, on whichever node Ray chose: in a temporary copy of its folder (``sent``, with ``--resume``);
    returns the result and the files the run left in its folder."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lifelong-ray-") as tmp:
        out = Path(tmp) / group  # the same folder name as the driver's: loggers group runs by it
        run_dir = out / f"{config.strategy}-seed{config.seed}"
        for name, data in (sent or {}).items():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_bytes(data)
        result = run_one(config, out, False, sent is not None)
        files = _folder_files(run_dir) if run_dir.is_dir() else {}
    return result, files


def _write_back(run_dir: Path, files: dict[str, bytes], sent: dict[str, bytes] | None,
                result: dict[str, Any]) -> None:
    """The driver's copy of a run folder: the task's files written (atomically, under the folder's lock), those
    the run removed removed; a traceback file named in a failure is renamed to the driver's copy."""
    if not files and not sent:
        return
    with user_os_errors("cannot write the run's files to", run_dir):
        with folder_lock(run_dir, "--out"):
            for name, data in files.items():
                atomic_write_bytes(run_dir / name, data)
            for name in set(sent or {}) - set(files):
                (run_dir / name).unlink(missing_ok=True)
    if result.get("traceback_file"):
        local = run_dir / Path(result["traceback_file"]).name
        result["failed"] = result["failed"].replace(result["traceback_file"], str(local))
        result["traceback_file"] = str(local)


def run_on_ray(configs: list[Any], out: Path, *, run_one: RunOne, check: Callable[[dict[str, Any]], Any],
               report: Callable[[dict[str, Any], int, int], None], threads: int, resume: bool,
               address: str | None) -> list[dict[str, Any]]:
    """Every run of a comparison as a Ray task; results in the order of ``configs``. The first failed run
    (``check`` raises) cancels the runs not yet finished; finished ones keep their folders for ``--resume``."""
    ray = import_ray()
    started = _connect(ray, address)
    try:
        gpus = [_gpus(ray, config.device) for config in configs]  # every refusal before the first task
        for config in configs:
            run_dir = out / f"{config.strategy}-seed{config.seed}"
            if run_dir.exists() and not run_dir.is_dir():
                raise UserError(f"run {config.strategy} seed {config.seed} failed: --out {run_dir} is a file, "
                                f"not a folder; choose another path")
        task = ray.remote(run_task)
        pending: dict[Any, tuple[int, Any, dict[str, bytes] | None]] = {}
        for k, config in enumerate(configs):
            run_dir = out / f"{config.strategy}-seed{config.seed}"
            sent = _folder_files(run_dir) if resume and (run_dir / CHECKPOINT_NAME).exists() else None
            options = task.options(num_cpus=threads, num_gpus=gpus[k], max_retries=0,
                                   name=f"lifelong-{config.strategy}-seed{config.seed}")
            pending[options.remote(run_one, config, out.name, threads, sent)] = (k, config, sent)
        results: list[dict[str, Any] | None] = [None] * len(configs)
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                k, config, sent = pending.pop(ref)
                try:
                    result, files = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task's process or node died, or it could not start
                    first = (str(exc).strip().splitlines() or [""])[0]
                    result, files = {"failed": f"run {config.strategy} seed {config.seed} failed on Ray: {first}; "
                                               f"continue with --resume", "user_error": False}, {}
                _write_back(out / f"{config.strategy}-seed{config.seed}", files, sent, result)
                results[k] = check(result)
                report(result, len(configs) - len(pending), len(configs))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()
