"""Command-line options several commands share, declared once (``edit`` and ``serve`` load the same model)."""

from __future__ import annotations

import argparse

from lifelong.platform.device import PRECISIONS


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``, for the commands that load the model."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (default), bf16 or fp16 autocast; weights and stored edits stay float32")
