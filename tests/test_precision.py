"""Mixed precision (``precision=bf16|fp16``) for the Avalanche baselines and DER, on the CPU.

Both reduced precisions autocast on CPU too, so these tests check the mechanics a GPU run relies on: the
forward runs in the reduced dtype, fp16 goes through a GradScaler, weights stay float32, the run learns.
"""

import numpy as np
import pytest
import torch
from conftest import TINY_STREAM

from lifelong.incremental.learner import RunContext
from lifelong.incremental.run import resolve_config, run_experiment
from lifelong.platform import registry
from lifelong.platform.device import LossScaler, autocast, check_precision

REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _learner(strategy, stream, **overrides):
    spec = registry.get("strategy", strategy)
    config = spec.config(**overrides)
    config.validate()
    return spec.factory(config, RunContext(stream=stream, device=torch.device("cpu"), seed=0))


def _record_training_dtypes(seen):
    """A global forward hook: the output dtype of every Linear run with gradients (modules DER adds per task
    included)."""

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.append(output.dtype)

    return torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("strategy,precision", [("naive", "bf16"), ("dark-er", "fp16"), ("icarl", "fp16"),
                                                ("der", "bf16")])
def test_training_runs_in_the_reduced_dtype_and_weights_stay_float32(strategy, precision, stream, one_thread):
    learner = _learner(strategy, stream, epochs=1, precision=precision)
    seen: list = []
    handle = _record_training_dtypes(seen)
    try:
        learner.train_experience(stream.train_stream[0])
    finally:
        handle.remove()
    assert seen and set(seen) == {REDUCED[precision]}
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())
    x, y = next(iter(torch.utils.data.DataLoader(stream.test_stream[0].dataset, batch_size=64)))[:2]
    logits = learner.predict(x)
    assert logits.dtype == torch.float32 and logits.shape == (len(x), stream.n_classes)
    assert (logits.argmax(1) == y).float().mean() > 0.5  # it learned the first five digits in one epoch


def test_fp16_goes_through_a_grad_scaler_and_bf16_does_not():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for precision, scaled in (("fp16", True), ("bf16", False), ("fp32", False)):
        scaler = LossScaler(precision, "cpu")
        with autocast(precision, "cpu"):
            loss = model(torch.randn(8, 4)).float().pow(2).mean()
        scaler.backward(loss)
        scaler.step(optimizer)
        assert scaler.enabled is scaled
        if scaled:
            assert scaler.scaler.get_scale() > 1  # the loss was multiplied before backward
        optimizer.zero_grad()


def test_a_reduced_precision_run_matches_fp32_closely(tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        config = resolve_config(strategy="replay", benchmark="split-digits",
                                overrides={**TINY_STREAM, "epochs": 4, "precision": precision})
        runs[precision] = np.asarray(run_experiment(config, out=tmp_path / precision, progress=False)["accuracy_matrix"])
    assert runs["bf16"][0, 0] > 0.8 and np.abs(runs["bf16"] - runs["fp32"]).max() < 0.15


def test_an_unknown_precision_is_refused_with_the_allowed_values(cli, tmp_path):
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        check_precision("fp8")
    result = cli("run", "--strategy", "naive", "--out", str(tmp_path / "x"), "--set", "precision=fp8")
    assert result.code == 2 and "precision" in result.stderr and "fp32, bf16, fp16" in result.stderr
    assert not (tmp_path / "x").exists()
