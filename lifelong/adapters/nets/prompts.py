"""Task prompts for a frozen vision transformer: one prompt per task, a value regulariser, batched inference.

Used by ProP (``lifelong.strategies.prop``). A prompt is ``P`` learnable tokens of the backbone's width that
:class:`~lifelong.adapters.nets.clip.VisionBackbone` inserts after the class token (shallow prompt tuning, as in
VPT-shallow and L2P). :func:`forward_all_prompts` evaluates every task's prompt on a batch in ONE forward of the
blocks: the patch embedding does not depend on the prompt, so it is computed once, then the ``T`` prompted
sequences are stacked along the batch axis (``T*B`` sequences) and pushed through the blocks together.
:func:`forward_each_prompt` is the reference loop of ``T`` forwards that the tests and the benchmark compare it
with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lifelong.adapters.nets.clip import VisionBackbone
from lifelong.platform.config import ConfigError

RegKind = Literal["l2", "bound", "none"]


class PromptBank(nn.Module):
    """The prompts of all tasks so far, ``prompts[t]`` of shape ``(length, width)``; grows by ``add_task``."""

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        if length < 1:
            raise ConfigError(f"prompt_length must be at least 1, got {length}")
        self.length = length
        self.width = width
        self.prompts = nn.ParameterList()

    def __len__(self) -> int:
        return len(self.prompts)

    def add_task(self, init: Literal["uniform", "normal", "previous", "zeros"] = "uniform",
                 init_scale: float = 1.0, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> nn.Parameter:
        """Append a new task prompt. ``uniform`` draws U(-s, s) as L2 does, ``normal`` N(0, s²) (s = init_scale),
        ``previous`` warm-starts from the last task's prompt (a copy, so the old prompt stays frozen).

        Random values are drawn on the CPU (with ``generator``, itself a CPU generator), so a seed gives the same
        prompt on every device; the parameter then lives on ``device`` (default: where the other prompts are,
        or the CPU for the first one).
        """
        shape = (self.length, self.width)
        if device is None:
            device = self.prompts[0].device if len(self.prompts) else torch.device("cpu")
        if init == "previous" and len(self.prompts):
            value = self.prompts[-1].detach().clone()
        elif init in ("uniform", "previous"):
            value = (torch.rand(shape, generator=generator) * 2 - 1) * init_scale
        elif init == "normal":
            value = torch.randn(shape, generator=generator) * init_scale
        elif init == "zeros":
            value = torch.zeros(shape, device=device)
        else:
            raise ConfigError(f"prompt_init: {init!r} is not allowed; allowed values: uniform, normal, previous, zeros")
        param = nn.Parameter(value.to(device))
        self.prompts.append(param)
        return param

    def resize(self, n_tasks: int, device: torch.device | str | None = None) -> None:
        """Rebuild the structure for ``n_tasks`` prompts (values come from a state dict afterwards, on resume)."""
        while len(self.prompts) < n_tasks:
            self.add_task("zeros", device=device)
        while len(self.prompts) > n_tasks:
            del self.prompts[len(self.prompts) - 1]

    def stacked(self) -> torch.Tensor:
        """All prompts as one tensor ``(T, length, width)``."""
        return torch.stack(list(self.prompts))


def prompt_regulariser(prompt: torch.Tensor, kind: RegKind = "l2", lam: float = 1e-3, bound: float = 1.0) -> torch.Tensor:
    """ProP's stability term on prompt values (reconstructed; the paper's formula is not available).

    ``l2``:    λ · Σ P²                       gradient 2λP
    ``bound``: λ · Σ max(|P| − b, 0)²         gradient 2λ·(|P| − b)·sign(P) where |P| > b, else 0
    ``none``:  0
    Penalising only what exceeds a bound ("excessively large prompt values") leaves small prompts free.
    """
    if kind == "none" or lam == 0:
        return prompt.sum() * 0.0
    if kind == "l2":
        return lam * prompt.pow(2).sum()
    if kind == "bound":
        return lam * torch.relu(prompt.abs() - bound).pow(2).sum()
    raise ConfigError(f"reg: {kind!r} is not allowed; allowed values: l2, bound, none")


def forward_all_prompts(backbone: VisionBackbone, x: torch.Tensor, prompts: torch.Tensor,
                        max_sequences: int = 0) -> torch.Tensor:
    """Features of ``x`` under every prompt, ``(T, B, F)``, computed as one batched forward of the blocks.

    ``prompts`` is ``(T, P, D)``. ``max_sequences`` > 0 caps the sequences per forward by splitting the IMAGES
    into slices of ``max_sequences // T``; every forward still carries all T prompts (there is never a loop
    over tasks). On a CPU, 128-256 sequences per forward is fastest (``bench/prop_batched.py``).
    """
    t = prompts.shape[0]
    b = x.shape[0]
    if max_sequences and t * b > max_sequences:
        step = max(1, max_sequences // t)
        return torch.cat([_all_prompts(backbone, x[i:i + step], prompts) for i in range(0, b, step)], dim=1)
    return _all_prompts(backbone, x, prompts)


def _all_prompts(backbone: VisionBackbone, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    t, p, _ = prompts.shape
    b = x.shape[0]
    tokens = backbone.embed(x)  # (B, L, D): computed once for all tasks
    k = backbone.n_prefix
    seq = torch.cat([
        tokens[:, :k].unsqueeze(0).expand(t, -1, -1, -1),
        prompts.to(tokens.dtype).unsqueeze(1).expand(-1, b, -1, -1),
        tokens[:, k:].unsqueeze(0).expand(t, -1, -1, -1),
    ], dim=2).reshape(t * b, -1, tokens.shape[-1])
    return backbone.forward_tokens(seq, p).reshape(t, b, -1)


def forward_each_prompt(backbone: VisionBackbone, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The reference: one full forward per task prompt, stacked to ``(T, B, F)``."""
    return torch.stack([backbone(x, prompts[i]) for i in range(prompts.shape[0])])

