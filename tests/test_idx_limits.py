"""The IDX reader reads no more than a file's header announces: a gzip bomb (a small label file followed by tens of
megabytes of zeros) is refused after reading one byte past the data, not after inflating all of it, and a header
announcing more data than any IDX data set holds is refused before reading."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import pytest

from lifelong.benchmarks._idx import MAX_DATA_BYTES, IdxError, read_idx


def _label_header(n: int) -> bytes:
    return b"\x00\x00\x08\x01" + struct.pack(">I", n)


def test_trailing_zeros_of_a_gzipped_file_are_not_inflated(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_label_header(10) + bytes(range(10)))
        zeros = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros after the data: about 64 KB on disk
            f.write(zeros)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(IdxError, match="more bytes after the 10 items"):
            read_idx(path, ndim=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # inflating the whole file would hold 64 MiB


def test_a_header_announcing_more_than_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 4_000_000_000, 28, 28) + bytes(16))
    with pytest.raises(IdxError, match=f"at most {MAX_DATA_BYTES} are read"):
        read_idx(path, ndim=3, trailing_shape=(28, 28))


def test_a_file_of_exactly_the_announced_size_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as f:
        f.write(_label_header(5) + bytes([1, 2, 3, 4, 5]))
    array, sha = read_idx(path, ndim=1)
    assert array.tolist() == [1, 2, 3, 4, 5] and len(sha) == 64
