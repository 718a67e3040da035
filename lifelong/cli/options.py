"""Command-line options several commands share, declared once (``edit`` and ``serve`` load the same model)."""

from __future__ import annotations

import argparse

from lifelong.platform.device import PRECISIONS
from lifelong.platform.errors import UserError


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``, for the commands that load the model."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (default), bf16 or fp16 autocast; weights and stored edits stay float32")


def text_argument(value: str, option: str) -> str:
    """``value`` if it is Unicode text. Python turns argv bytes that are not UTF-8 into lone surrogates
    (``\\udcff`` for a byte 0xff); nothing downstream can encode them, so they are refused here in one line
    naming the option and the byte, instead of a ``UnicodeEncodeError`` deep inside a model."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF else \
            f"a lone UTF-16 surrogate U+{code:04X}"
        raise UserError(f"{option} holds {what} (at character {exc.start + 1}); pass UTF-8 text") from None
    return value
