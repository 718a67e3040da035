"""``lifelong new plugin NAME``: write a plugin package that installs with pip and runs with ``lifelong run``.

The package is the smallest complete strategy plugin: a config dataclass with validated options and help comments
(``lifelong plugins show NAME`` prints them), a ``Learner`` that trains an MLP with a reservoir replay memory, uses
what ``context`` holds (the stream's input shape and class count, the device, ``log_metric``), and saves its memory
with ``extra_state`` / ``load_extra_state`` so ``--resume`` continues it exactly; the ``pyproject.toml`` with the
entry point that announces it; a README and a test. The folder is written beside its destination and renamed
into place, so a refused or interrupted call leaves nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

from lifelong.platform.atomic import fsync_dir, fsync_tree
from lifelong.platform.errors import UserError
from lifelong.platform.registry import list_plugins

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    new = subparsers.add_parser("new", help="write a new plugin package from the template")
    sub = new.add_subparsers(dest="new_command", metavar="WHAT")
    sub.required = True
    plugin = sub.add_parser("plugin", help="a strategy plugin package: pyproject entry point, config, learner, test")
    plugin.add_argument("name", help="the strategy's name, kebab-case (e.g. my-replay)")
    plugin.add_argument("--out", default=None, help="the package folder to create (default ./lifelong-NAME)")
    plugin.set_defaults(handler=cmd_new_plugin)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    out = write_plugin_package(args.name, Path(args.out or f"lifelong-{args.name}"))
    print(f"wrote {out}: the strategy {args.name!r} as an installable package")
    print(f"  pip install -e {out}              # announces it through its entry point")
    print(f"  lifelong plugins show {args.name}")
    print(f"  lifelong run --strategy {args.name}")
    print(f"  python -m pytest {out / 'tests'}")
    return 0


def write_plugin_package(name: str, out: Path) -> Path:
    """Write the package of strategy ``name`` into the new folder ``out``; refused in one line for a name that is
    not kebab-case or is already a registered strategy, or an ``out`` that exists and is not empty."""
    if not _NAME.match(name):
        raise UserError(f"plugin name {name!r} is not kebab-case (lowercase letters and digits, words joined by '-', "
                        f"starting with a letter), e.g. my-replay")
    if name in {s.name for s in list_plugins("strategy")}:
        raise UserError(f"a strategy named {name!r} is already registered; choose another name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder")
    module = name.replace("-", "_")
    files = {  # path parts inside the package folder -> template
        ("pyproject.toml",): PYPROJECT,
        (module, "__init__.py"): MODULE,
        ("tests", "test_plugin.py"): TEST,
        ("README.md",): README,
    }
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: the folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        for parts, template in files.items():
            path = tmp.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.replace("{name}", name).replace("{module}", module))
        fsync_tree(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "lifelong-{name}"
version = "0.1.0"
description = "The {name} strategy, a lifelong plugin"
requires-python = ">=3.10"
dependencies = ["lifelong", "torch"]

# The line that makes this a lifelong plugin: the registry imports the module on its first lookup.
[project.entry-points."lifelong.plugins"]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]
'''

MODULE = '''"""{name}: a class-incremental strategy for lifelong (written by `lifelong new plugin {name}`).

An MLP trained on each experience together with a reservoir replay memory of past samples. Replace the method
with yours and keep what the runner relies on: ``self.model`` (an ``nn.Module``: the runner checkpoints it),
``train_experience``, ``predict`` (logits over every class of the stream; the base class's runs ``self.model``),
and, because ``uses_replay_memory`` is declared, ``extra_state`` / ``load_extra_state`` (without them ``--resume``
is refused: it would continue with an empty memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong import Capabilities, Learner, StrategyConfig, register


@dataclass
class Config(StrategyConfig):
    """Options of {name}; every StrategyConfig field (epochs, lr, batch_size, ...) is there too."""

    #: samples of past experiences kept and replayed with each new one (0: plain fine-tuning)
    mem_size: int = 200
    hidden: int = 128  # width of the hidden layer

    def validate(self) -> None:  # refuse what cannot be used, naming the field and what is allowed
        super().validate()
        if self.mem_size < 0:
            raise ValueError(f"mem_size must be >= 0, got {self.mem_size}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")


@register("strategy", "{name}", config=Config, summary="MLP with a reservoir replay memory ({name} plugin)",
          capabilities=Capabilities(uses_replay_memory=True))
class Strategy(Learner):
    """Fine-tunes an MLP on each experience plus the memory, then offers the experience to the memory."""

    def __init__(self, config: Config, context: Any) -> None:
        super().__init__(config, context)
        shape = tuple(context.stream.input_shape)  # e.g. (1, 8, 8) for split-digits
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), config.hidden), nn.ReLU(),
                                   nn.Linear(config.hidden, context.stream.n_classes)).to(context.device)
        self.memory_x = torch.empty(0, *shape)
        self.memory_y = torch.empty(0, dtype=torch.long)
        self.seen = 0  # samples offered to the memory so far (reservoir sampling)

    def train_experience(self, experience: Any) -> None:
        x, y = _tensors(experience.dataset)
        data_x, data_y = torch.cat([x, self.memory_x]), torch.cat([y, self.memory_y])
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=self.config.momentum,
                                    weight_decay=self.config.weight_decay)
        device = self.context.device
        self.model.train()
        for epoch in range(self.config.epochs):  # the runner seeds every step, so the order is reproducible
            order, total = torch.randperm(len(data_y)), 0.0
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start:start + self.config.batch_size]
                loss = nn.functional.cross_entropy(self.model(data_x[batch].to(device)), data_y[batch].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss) * len(batch)
            self.context.log_metric("train_loss", total / max(len(order), 1), epoch=epoch)  # no-op without loggers
        self._remember(x, y)

    def _remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Reservoir sampling: every sample seen so far has the same chance to be in the memory."""
        for i in range(len(y)):
            self.seen += 1
            if len(self.memory_y) < self.config.mem_size:
                self.memory_x = torch.cat([self.memory_x, x[i:i + 1]])
                self.memory_y = torch.cat([self.memory_y, y[i:i + 1]])
            else:
                slot = int(torch.randint(self.seen, (1,)))
                if slot < self.config.mem_size:
                    self.memory_x[slot], self.memory_y[slot] = x[i], y[i]

    def extra_state(self) -> dict[str, Any]:
        """What the checkpoint keeps beyond the model: tensors and plain values (nothing is pickled)."""
        return {"memory_x": self.memory_x, "memory_y": self.memory_y, "seen": self.seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.memory_x, self.memory_y, self.seen = state["memory_x"], state["memory_y"], int(state["seen"])


def _tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an experience's dataset as two tensors (items are (x, y) or (x, y, task))."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=512)
    xs, ys = zip(*((batch[0], batch[1]) for batch in loader))
    return torch.cat(xs).float(), torch.cat(ys).long()
'''

TEST = '''"""The plugin runs end to end on a small stream, and a resumed run gives the uninterrupted run's numbers."""

from lifelong.incremental.run import resolve_config, run_experiment

SMALL = {"n_experiences": 2, "train_per_class": 20, "epochs": 5, "lr": 0.1}


def test_runs_and_resumes_exactly(tmp_path):
    config = resolve_config(strategy="{name}", overrides=SMALL, device="cpu")
    whole = run_experiment(config, out=tmp_path / "whole", progress=False)
    assert whole["accuracy_matrix"][0][0] > 0.5
    run_experiment(config, out=tmp_path / "split", progress=False, stop_after=1)
    resumed = run_experiment(config, out=tmp_path / "split", progress=False, resume=True)
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
'''

README = '''# lifelong-{name}

The `{name}` strategy as a [lifelong](https://pypi.org/project/lifelong/) plugin, written by
`lifelong new plugin {name}`: an MLP with a reservoir replay memory. Edit `{module}/__init__.py`.

```
pip install -e .
lifelong plugins show {name}        # its config fields, defaults and help
lifelong run --strategy {name} --set mem_size=500
python -m pytest tests
```
'''
