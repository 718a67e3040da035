"""ANN-to-SNN conversion of a finished run: turn a finished run's ANN into a spiking network and measure it per time step.

The run is rebuilt from its own ``results.json`` (strategy, benchmark and both configs) and ``checkpoint.pt``;
the model's clip activations become IF neurons (``adapters/nets/snn_conversion.py``: plain conversion, ECL's
dual-threshold neurons with a half-threshold start, and ``ecl-opt``, whose starts are optimised per layer and per
T on a calibration batch of the run's training images), and the converted network is evaluated on the run's whole
test stream after each time step up to the largest asked for. Results go to ``conversion.json`` in the run
folder (one atomic write); ``lifelong convert`` prints the table. Any strategy works whose model is a clip backbone and whose
``predict`` is a forward of that model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lifelong.adapters.nets.snn_conversion import (
    SCHEMES,
    calibrate_v_init,
    clip_layers,
    run_timesteps,
    spiking,
    unsupported_layers,
)
from lifelong.incremental.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lifelong.incremental.learner import RunContext
from lifelong.incremental.run import RunConfig
from lifelong.platform import registry
from lifelong.platform.atomic import atomic_write_text
from lifelong.platform.config import build_config
from lifelong.platform.errors import UserError, user_os_errors

RESULT_NAME = "conversion.json"
#: the most time steps a conversion runs: each step is one forward over the whole test stream per scheme, so T=256
#: already costs 256 evaluations; the ECL paper reports up to T=64
MAX_TIMESTEPS = 256


def load_finished_run(run_dir: Path, device: Any) -> tuple[dict[str, Any], Any, Any]:
    """``(results, learner, stream)`` of the finished run in ``run_dir``, the learner holding its final weights."""
    results_path, checkpoint_path = run_dir / "results.json", run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise UserError(f"--run: {run_dir} is not a folder")
    if not results_path.is_file():
        raise UserError(f"--run: {run_dir} holds no results.json; give the folder of a finished `lifelong run`")
    if not checkpoint_path.is_file():
        raise UserError(f"--run: {run_dir} holds no {CHECKPOINT_NAME}, so it has no weights to convert")
    try:
        results = json.loads(results_path.read_text())
        config = build_config(RunConfig, results["config"]).typed()
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--run: {results_path} is not the results.json of a run ({exc})") from None
    state = load_checkpoint(checkpoint_path)
    stream = registry.get("benchmark", config.benchmark).factory(config.benchmark_config)
    if int(state.get("completed", 0)) != stream.n_experiences:
        raise UserError(f"--run: the checkpoint in {run_dir} has {state.get('completed')} of {stream.n_experiences} "
                        "experiences; finish the run first (lifelong run ... --resume)")
    context = RunContext(stream=stream, device=device, seed=config.seed)
    learner = registry.get("strategy", config.strategy).factory(config.strategy_config, context)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--run: the checkpoint in {run_dir} does not fit the model its results.json describes "
                        f"({first})") from None
    learner.model.to(device)
    return results, learner, stream


def calibration_batch(stream: Any, size: int, device: Any) -> Any:
    """The first ``size`` training images of the run's stream, an equal share from each experience."""
    import torch
    from torch.utils.data import DataLoader

    share = max(1, size // stream.n_experiences)
    parts = []
    for experience in stream.train_stream:
        dataset = experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        parts.append(next(iter(DataLoader(dataset, batch_size=share, shuffle=False, num_workers=0)))[0])
    return torch.cat(parts)[:size].to(device)


def convert_run(run_dir: Path, timesteps: list[int], schemes: list[str], device: Any,
                calibration_size: int = 256) -> dict[str, Any]:
    """Evaluate the ANN of the finished run and its conversions; write and return ``conversion.json``'s content."""
    import torch
    from torch.utils.data import DataLoader

    if run_dir.is_dir() and not os.access(run_dir, os.W_OK):
        raise UserError(f"--run: cannot write {RESULT_NAME} into {run_dir} (the folder is not writable); "
                        "copy the run folder somewhere writable")
    results, learner, stream = load_finished_run(run_dir, device)
    model = learner.model
    strategy_config = results["config"].get("strategy_config", {})
    if not clip_layers(model):
        raise UserError(f"--run: the model of {run_dir} ({results['strategy']}, model "
                        f"{strategy_config.get('model', '?')!r}) has no clip activation to convert; train the run on "
                        "a clip backbone (--set model=cnn-28-clip or cnn-small-clip)")
    bad = unsupported_layers(model)
    if bad:
        raise UserError(f"--run: the model of {run_dir} has layers a rate conversion cannot carry: {', '.join(bad)}")
    _check_predict_is_a_forward(learner, stream, results["strategy"], device)
    thresholds = {name: float(model.get_submodule(name).threshold.detach()) for name in clip_layers(model)}
    t_max = timesteps[-1]
    batch = int(strategy_config.get("eval_batch_size", 256))
    n_exp = stream.n_experiences
    ann_correct = [0] * n_exp
    snn_correct = {s: [[0] * n_exp for _ in timesteps] for s in schemes}
    sizes = [0] * n_exp
    spike_counts = {s: [0.0, 0] for s in schemes}  # spikes (either sign) and neuron-steps over the test stream
    calibrated: dict[str, dict[int, tuple[list[float], float]]] = {}  # scheme -> T -> (v_inits, calibration mse)
    if any(SCHEMES[s].calibrated for s in schemes):
        if calibration_size < 1:
            raise UserError(f"--calibration-size: expected a positive number of images, got {calibration_size}")
        x_cal = calibration_batch(stream, calibration_size, device)
        for s in (s for s in schemes if SCHEMES[s].calibrated):
            calibrated[s] = {t: calibrate_v_init(model, learner.predict, x_cal, t, SCHEMES[s]) for t in timesteps}
    for j in range(n_exp):
        dataset = stream.test_stream[j].dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        for item in DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0):
            x, y = item[0].to(device), item[1].to(device)
            sizes[j] += int(y.numel())
            with torch.no_grad():
                ann_correct[j] += int((learner.predict(x).argmax(1) == y).sum())
            for s in schemes:
                if s in calibrated:  # each T has its own starts: one run of T steps per T
                    for k, t in enumerate(timesteps):
                        with spiking(model, SCHEMES[s], calibrated[s][t][0]) as neurons:
                            out = run_timesteps(learner.predict, neurons, x, t)[-1]
                            if t == t_max:
                                spike_counts[s][0] += sum(n.spikes for n in neurons)
                                spike_counts[s][1] += sum(n.neuron_steps for n in neurons)
                        snn_correct[s][k][j] += int((out.argmax(1) == y).sum())
                    continue
                with spiking(model, SCHEMES[s]) as neurons:
                    outs = run_timesteps(learner.predict, neurons, x, t_max)
                    spike_counts[s][0] += sum(n.spikes for n in neurons)
                    spike_counts[s][1] += sum(n.neuron_steps for n in neurons)
                for k, t in enumerate(timesteps):
                    snn_correct[s][k][j] += int((outs[t - 1].argmax(1) == y).sum())
    rates = {s: spikes / steps if steps else 0.0 for s, (spikes, steps) in spike_counts.items()}
    total = sum(sizes)

    def acc(correct: list[int]) -> dict[str, Any]:
        return {"accuracy": sum(correct) / max(total, 1),
                "per_experience": [c / max(n, 1) for c, n in zip(correct, sizes)]}

    out = {
        "run": str(run_dir),
        "strategy": results["strategy"],
        "benchmark": results["benchmark"],
        "seed": results["seed"],
        "model": strategy_config.get("model"),
        "timesteps": timesteps,
        "test_samples": total,
        "thresholds": thresholds,
        "ann": acc(ann_correct),
        "schemes": {
            s: {
                "v_init": SCHEMES[s].v_init,
                "dual_threshold": SCHEMES[s].dual,
                "spike_rate_at_max_t": rates[s],
                "by_timestep": {str(t): acc(snn_correct[s][k]) for k, t in enumerate(timesteps)},
                **({"calibration_size": calibration_size,
                    "v_init_by_timestep": {str(t): v for t, (v, _) in calibrated[s].items()},
                    "calibration_mse_by_timestep": {str(t): e for t, (_, e) in calibrated[s].items()}}
                   if s in calibrated else {}),
            }
            for s in schemes
        },
    }
    with user_os_errors("cannot write the conversion results to", run_dir / RESULT_NAME):
        atomic_write_text(run_dir / RESULT_NAME, json.dumps(out, indent=2) + "\n")
    return out


def _check_predict_is_a_forward(learner: Any, stream: Any, strategy: str, device: Any) -> None:
    """Refuse, in one line, a strategy whose predictions are not a forward of its network (iCaRL's nearest class
    mean needs class means the checkpoint does not carry): conversion replaces the network's activations, so only
    a forward of the network can be converted."""
    import torch
    from torch.utils.data import DataLoader

    dataset = stream.test_stream[0].dataset
    dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
    x = next(iter(DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0)))[0].to(device)
    try:
        with torch.no_grad():
            learner.predict(x)
    except (AssertionError, RuntimeError, ValueError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--run: {strategy}'s predictions cannot be recomputed from its checkpoint ({first}); "
                        "convert a run whose prediction is a forward of its network (naive, replay, ewc, der, ...)") from None
