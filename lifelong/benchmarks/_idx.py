"""A checked reader of the IDX files that MNIST and Fashion-MNIST ship (LeCun's format), gzipped or not.

The format: two zero bytes, one type byte (0x08 = unsigned byte, the only type these data sets use), one byte
with the number of dimensions, then one big-endian 32-bit size per dimension, then the data in C order. Image
files are ``0x00000803`` (N x 28 x 28), label files ``0x00000801`` (N).

Whether a file is gzipped is read from its first two bytes (``1f 8b``), not from its name, so a gunzipped copy
kept under ``.gz`` (or the reverse) still loads. Every check failure is an ``IdxError`` that names the file and
what is wrong with it in one line: not an IDX file at all (and, when it is recognisable, what it is instead),
the wrong kind of IDX file, a truncated file or one with bytes left over.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.platform.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08
#: IDX type codes (the third byte) and what they hold; only unsigned bytes are read here
TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}


#: the most data one IDX file may hold (Fashion-MNIST's training images are 47 MB): a header announcing more, or
#: a compressed file that inflates past what its header announces, is refused without reading it all
MAX_DATA_BYTES = 1 << 30


class IdxError(UserError):
    """A file that is not the IDX file expected; the message names the file and the problem."""


@dataclass(frozen=True)
class IdxHeader:
    """What the first bytes of an IDX file say: the element type and the shape."""

    type_code: int
    shape: tuple[int, ...]

    @property
    def magic(self) -> int:
        return (self.type_code << 8) | len(self.shape)

    @property
    def data_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def header_bytes(self) -> int:
        return 4 + 4 * len(self.shape)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _open(path: Path):  # a binary file object, decompressing when the file is gzipped
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _what_is_it(start: bytes) -> str:
    """A guess at a file that is not IDX, from its first bytes ('' when nothing is recognisable)."""
    if start[:1] == b"\x80":
        return " (it looks like a Python pickle, e.g. a CIFAR batch)"
    if start[:8] == b"\x89PNG\r\n\x1a\n":
        return " (it is a PNG image)"
    if start[:3] == b"\xff\xd8\xff":
        return " (it is a JPEG image)"
    if start[:4] == b"PK\x03\x04":
        return " (it is a zip archive)"
    if start[:6] == b"\x93NUMPY":
        return " (it is a NumPy .npy file)"
    if start and all(32 <= b < 127 or b in (9, 10, 13) for b in start):
        return " (it is a text file)"
    return ""


def read_header(path: str | Path) -> IdxHeader:
    """Parse and check the header of an IDX file (reads only its first bytes, decompressing if gzipped)."""
    path = Path(path)
    if not path.is_file():
        raise IdxError(f"{path}: missing")
    gz = is_gzip(path)
    try:
        with _open(path) as f:
            start = f.read(4)
            if len(start) < 4:
                raise IdxError(f"{path}: truncated: {len(start)} bytes, too short for an IDX header")
            zero, type_code, ndim = start[:2], start[2], start[3]
            if zero != b"\x00\x00" or type_code not in TYPE_NAMES or not 1 <= ndim <= 4:
                raise IdxError(f"{path}: not an IDX file: it starts with bytes {start.hex(' ')}, an IDX file with "
                               f"0x00 0x00 <type> <ndim>{_what_is_it(start)}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise IdxError(f"{path}: truncated inside the IDX header")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise IdxError(f"{path}: cannot be read as a{' gzipped' if gz else 'n'} IDX file: "
                       f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    return IdxHeader(type_code, struct.unpack(f">{ndim}I", dims))


def check_header(path: str | Path, header: IdxHeader, *, ndim: int, trailing_shape: tuple[int, ...] = ()) -> None:
    """Refuse a header of the wrong kind: labels where images are expected, another image size, non-bytes."""
    path = Path(path)
    kind = {1: "label", 3: "image"}.get(ndim, f"{ndim}-d")
    if header.type_code != UBYTE:
        raise IdxError(f"{path}: an IDX file of {TYPE_NAMES[header.type_code]} values, expected unsigned bytes")
    if len(header.shape) != ndim:
        found = {1: "a label file", 3: "an image file"}.get(len(header.shape), f"{len(header.shape)}-d data")
        raise IdxError(f"{path}: an IDX {kind} file was expected (magic 0x{(UBYTE << 8) | ndim:08x}), this is "
                       f"{found} (magic 0x{header.magic:08x}, shape {'x'.join(map(str, header.shape))})")
    if trailing_shape and tuple(header.shape[1:]) != tuple(trailing_shape):
        raise IdxError(f"{path}: images of {'x'.join(map(str, header.shape[1:]))} pixels, expected "
                       f"{'x'.join(map(str, trailing_shape))} (another data set?)")


def read_idx(path: str | Path, *, ndim: int, trailing_shape: tuple[int, ...] = ()) -> tuple[np.ndarray, str]:
    """The array an IDX file holds (uint8, shape from its header) and the sha256 of the file's uncompressed
    bytes; the header is checked as ``check_header`` does, and the data must be exactly as long as it says."""
    path = Path(path)
    header = read_header(path)
    check_header(path, header, ndim=ndim, trailing_shape=trailing_shape)
    if header.data_bytes > MAX_DATA_BYTES:
        raise IdxError(f"{path}: the header announces {header.data_bytes} bytes of data "
                       f"(shape {'x'.join(map(str, header.shape))}); at most {MAX_DATA_BYTES} are read")
    expected = header.header_bytes + header.data_bytes
    try:
        with _open(path) as f:  # never more than the header announces, plus one byte to see that more follows
            raw = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: truncated or corrupt gzip data ({' '.join(str(exc).split())})") from None
    found = len(raw) - header.header_bytes
    if found < header.data_bytes:
        raise IdxError(f"{path}: truncated: the header announces {header.shape[0]} items ({header.data_bytes} bytes "
                       f"of data), the file holds {found} bytes")
    if found > header.data_bytes:
        raise IdxError(f"{path}: more bytes after the {header.shape[0]} items its header announces "
                       f"(not an IDX file of this shape)")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header.header_bytes).reshape(header.shape)
    return array, hashlib.sha256(raw).hexdigest()
