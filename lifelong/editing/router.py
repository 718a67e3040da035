"""The router of record for edits: a faiss index over the keys of a store's active edits.

One ``Router`` per open ``EditStore`` (``EditStore.refresh_router()``, kept in step with the rows by
``editing/store_router.py``); the session hands it to its editor
(``Editor.bind_router``), and SoLA and GRACE take their per-sequence routing decision by searching it
(``Router.nearest``). The faiss id of a key is the id of its edit's row in the store.

Metric (the editor's ``metric``, fixed in the store's meta data by ``EditStore.set_editor``):

- ``ip``: keys and queries are L2-normalised and compared by inner product, i.e. cosine; ``nearest`` reports the
  cosine distance ``1 - cos`` (SoLA's threshold is on it);
- ``l2``: raw keys, Euclidean; ``nearest`` reports the Euclidean distance (GRACE's deferral radii are on it).

Index type, by the number of keys when the index is (re)built:

- below ``IVF_MIN_KEYS`` an exact ``IndexFlatIP``/``IndexFlatL2`` inside an ``IndexIDMap2``;
- from ``IVF_MIN_KEYS`` on an ``IndexIVFFlat`` with ``nlist = sqrt(n)`` cells trained on ``40 * nlist`` keys, and
  ``nprobe = IVF_NPROBE`` cells searched per query. Keys added later go into the existing cells; the index is
  rebuilt (re-trained) when it has grown 4x since it was trained or fallen below half the threshold, and a flat
  index is rebuilt as IVF once it reaches the threshold.

Why 20,000: measured with ``python bench/edit_router.py --scan`` (dimension 576, SmolLM2's key size, a batch of
8 queries, ``Router.nearest``, 2 threads on a 2-core machine shared with other jobs, load ~6.6):

    keys     flat ms   IVF ms   IVF build s   IVF recall of stored keys
    5,000      20.8      8.0        0.22          1.0000
    10,000     26.1      8.0        0.37          1.0000
    20,000     36.1      8.1        0.51          1.0000
    50,000     70.0      8.0        1.12          1.0000
    100,000   116.0      8.0        1.95          1.0000

Exact search grows by ~1 ms per 1,000 keys; IVF stays at the cost of probing 16 cells. Below 20,000 keys the
flat look-up (< ~36 ms per batch) is about 1% of one routed generation of a batch of 8 (2-3 s for 16 tokens on
this machine) and it is exact, so paraphrases route exactly as measured in ``docs/editing.md``; above it the flat
cost keeps growing (5% of a generation at 1e5 keys) while IVF's does not, and IVF's training is still cheap.
A stored key's own query is always found by IVF (it lies in the cell it was assigned to); a paraphrase may fall
into a cell that is not probed, so past the threshold paraphrase routing is approximate.

Ties (several keys at the same distance, e.g. the same prompt edited twice): among the ``TIE_CANDIDATES``
nearest keys, those within ``TIE_TOLERANCE`` of the best one are ties and the newest (largest id) wins for SoLA;
GRACE asks for the oldest (the first codebook entry, as its reference code does).

Persistence: ``write`` puts the index in ``router-<checksum>.faiss`` and names it, with the checksum of the
store rows it was built from and the file's size and SHA-256, in ``router.json``; ``read`` loads it only when that
checksum and the metric match the store's, the count and dimension match the rows' (when the caller gives them),
and the file has the recorded size (no larger than that many keys can need) and SHA-256, all checked before faiss
reads a byte of it: faiss trusts the lengths inside the file, so one changed length byte would otherwise make it
allocate whatever the byte says. A missing, damaged or stale file means a rebuild from the rows (the database is
the truth).
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lifelong.platform.atomic import atomic_write_text, atomic_write_with, file_sha256

METRICS = ("ip", "l2")
IVF_MIN_KEYS = 20_000
IVF_NPROBE = 16
TIE_CANDIDATES = 8
TIE_TOLERANCE = 1e-6
ROUTER_META = "router.json"
ROUTER_PREFIX = "router-"


def max_index_bytes(count: int, dim: int) -> int:
    """An upper bound on the size of a saved index of ``count`` keys of size ``dim``, flat or IVF (vectors, ids,
    the IVF centroids and list headers, and faiss's headers), so a file announcing more is never read."""
    nlist = 4 * math.isqrt(max(count, IVF_MIN_KEYS)) + 64
    return count * (4 * dim + 16) + nlist * (4 * dim + 64) + 65536


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"router metric {metric!r} is not allowed; allowed values: {', '.join(METRICS)}")
    return metric


def normalise(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.float32)
    norms = np.linalg.norm(keys, axis=1, keepdims=True)
    return keys / np.maximum(norms, 1e-12)


class Router:
    """A faiss index over ``(edit id, key)`` pairs with the editor's metric; see the module docstring."""

    def __init__(self, metric: str = "ip", *, ivf_min_keys: int = IVF_MIN_KEYS, nprobe: int = IVF_NPROBE) -> None:
        self._metric = check_metric(metric)
        self.ivf_min_keys = int(ivf_min_keys)
        self.nprobe = int(nprobe)
        self.index: Any = None
        self.kind = "flat"
        self.dim: int | None = None
        self._ids: set[int] = set()
        self._trained_n = 0

    # ------------------------------------------------------------------ state
    @property
    def metric(self) -> str:
        return self._metric

    @metric.setter
    def metric(self, value: str) -> None:
        if check_metric(value) != self._metric and self._ids:
            raise ValueError(f"the router holds {len(self._ids)} {self._metric} keys; rebuild it to change the metric")
        self._metric = value

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, edit_id: object) -> bool:
        return int(edit_id) in self._ids  # type: ignore[call-overload]

    def ids(self) -> set[int]:
        """The ids in the index (a copy)."""
        return set(self._ids)

    def prepare(self, keys: np.ndarray) -> np.ndarray:
        """Keys or queries as the index sees them: float32 (n, d), L2-normalised for ``ip``."""
        keys = np.asarray(keys, dtype=np.float32)
        keys = np.ascontiguousarray(keys.reshape(len(keys), -1))
        return np.ascontiguousarray(normalise(keys)) if self._metric == "ip" else keys

    # ------------------------------------------------------------------ building
    def _faiss_metric(self) -> int:
        import faiss

        return faiss.METRIC_INNER_PRODUCT if self._metric == "ip" else faiss.METRIC_L2

    def _empty_flat(self, dim: int) -> Any:
        import faiss

        flat = faiss.IndexFlatIP(dim) if self._metric == "ip" else faiss.IndexFlatL2(dim)
        return faiss.IndexIDMap2(flat)

    def build(self, ids: Sequence[int] | np.ndarray, keys: np.ndarray) -> None:
        """Replace the content by ``keys`` (n, d) under ``ids``; flat below ``ivf_min_keys`` keys, else IVF."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.index, self.kind, self._ids, self._trained_n = None, "flat", set(), 0
        if len(ids) == 0:
            return
        x = self.prepare(keys)
        if len(x) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(x)} keys")
        self.dim = int(x.shape[1])
        n = len(ids)
        if n < self.ivf_min_keys:
            self.index = self._empty_flat(self.dim)
        else:
            nlist = max(16, int(round(math.sqrt(n))))
            quant = faiss.IndexFlatIP(self.dim) if self._metric == "ip" else faiss.IndexFlatL2(self.dim)
            ivf = faiss.IndexIVFFlat(quant, self.dim, nlist, self._faiss_metric())
            rng = np.random.default_rng(0)
            sample = x if n <= 40 * nlist else x[np.sort(rng.choice(n, 40 * nlist, replace=False))]
            ivf.train(sample)
            ivf.nprobe = min(self.nprobe, nlist)
            self._quantizer = quant  # kept alive beside the IVF index, which does not own it here
            self.index, self.kind, self._trained_n = ivf, "ivf", n
        self.index.add_with_ids(x, ids)
        self._ids = set(ids.tolist())

    def needs_rebuild(self) -> bool:
        """True when the index type or the IVF cells no longer fit the number of keys (see the module docstring)."""
        n = len(self._ids)
        if self.kind == "flat":
            return n >= self.ivf_min_keys
        return n < self.ivf_min_keys // 2 or n >= 4 * self._trained_n

    def add(self, ids: Sequence[int] | np.ndarray, keys: np.ndarray) -> None:
        """Add keys under (new) ids; an id already present is refused."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        dup = [int(i) for i in ids if int(i) in self._ids]
        if dup or len(set(ids.tolist())) != len(ids):
            raise ValueError(f"edit {dup[0] if dup else int(ids[0])} is already in the router")
        x = self.prepare(keys)
        if self.index is None:
            self.dim = int(x.shape[1])
            self.index, self.kind = self._empty_flat(self.dim), "flat"
        if x.shape[1] != self.dim:
            raise ValueError(f"edit {int(ids[0])} has a key of size {x.shape[1]}; the router holds keys of size {self.dim}")
        self.index.add_with_ids(x, ids)
        self._ids.update(ids.tolist())

    def remove(self, ids: Iterable[int]) -> int:
        """Drop the keys of ``ids`` (ids not present are ignored); returns how many were removed."""
        gone = np.asarray(sorted({int(i) for i in ids} & self._ids), dtype=np.int64)
        if len(gone) == 0:
            return 0
        import faiss

        self.index.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone)))
        self._ids.difference_update(gone.tolist())
        return len(gone)

    # ------------------------------------------------------------------ searching
    def search(self, queries: np.ndarray, k: int = 1, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest keys of ``queries`` (n, d): ``(scores, ids)`` as faiss gives them (cosine for ``ip``,
        squared L2 for ``l2``); ids are -1 where there is none. ``allowed``: search only these ids."""
        import faiss

        q = self.prepare(queries)
        empty = (np.full((len(q), k), -np.inf if self._metric == "ip" else np.inf, dtype=np.float32),
                 np.full((len(q), k), -1, dtype=np.int64))
        if self.index is None or not self._ids or len(q) == 0:
            return empty
        if allowed is None:
            return self.index.search(q, k)
        allowed = np.ascontiguousarray(np.asarray(allowed, dtype=np.int64))
        if len(allowed) == 0:
            return empty
        sel = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.index.nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
        return self.index.search(q, k, params=params)

    def nearest(self, queries: np.ndarray, *, allowed: np.ndarray | None = None, newest: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """One decision per query: ``(distance, id)`` of its nearest key (id -1, distance inf where none).

        The distance is ``1 - cos`` for ``ip`` and Euclidean for ``l2``. Ties within ``TIE_TOLERANCE`` go to the
        newest id (``newest=False``: the oldest)."""
        n_keys = len(self._ids) if allowed is None else min(len(self._ids), len(allowed))
        k = max(1, min(TIE_CANDIDATES, n_keys))
        scores, ids = self.search(queries, k, allowed)
        if self._metric == "ip":
            dist = (1.0 - scores).astype(np.float32)
        else:
            dist = np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)
        dist = np.where(ids >= 0, dist, np.inf).astype(np.float32)
        best = dist[:, 0]
        if k > 1:
            tie = (dist <= best[:, None] + TIE_TOLERANCE * np.maximum(1.0, np.abs(best[:, None]))) & (ids >= 0)
            if tie[:, 1:].any():
                masked = np.where(tie, ids, -1 if newest else np.iinfo(np.int64).max)
                pick = masked.argmax(1) if newest else masked.argmin(1)
                rows = np.arange(len(ids))
                return dist[rows, pick], ids[rows, pick]
        return best.copy(), ids[:, 0].copy()

    # ------------------------------------------------------------------ persistence
    def write(self, folder: str | os.PathLike, checksum: str) -> None:
        """Save beside the store: ``router-<checksum>.faiss`` and ``router.json`` naming it with its size and
        SHA-256 (both atomic; the index file is always written anew, so a damaged one of that name is replaced).
        Any failure is an ``OSError`` (faiss's ``RuntimeError`` of a failed write included), the old files intact."""
        import faiss

        folder = Path(folder)
        meta: dict[str, Any] = {"checksum": checksum, "metric": self._metric, "kind": self.kind,
                                "ntotal": len(self._ids), "dim": self.dim, "trained_n": self._trained_n,
                                "file": None}
        if self.index is not None and self._ids:
            name = f"{ROUTER_PREFIX}{checksum[:24]}.faiss"
            try:
                atomic_write_with(folder / name, lambda tmp: faiss.write_index(self.index, str(tmp)))
            except RuntimeError as exc:  # faiss reports a failed write (a full disk) as a RuntimeError
                text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                code = errno.ENOSPC if "No space left" in text else errno.EIO
                raise OSError(code, f"faiss could not write the index ({text[-200:]})", str(folder / name)) from None
            meta.update(file=name, bytes=(folder / name).stat().st_size, sha256=file_sha256(folder / name))
        atomic_write_text(folder / ROUTER_META, json.dumps(meta))
        for p in folder.glob(f"{ROUTER_PREFIX}*.faiss"):  # older index files
            if p.name != meta["file"]:
                try:
                    p.unlink()
                except OSError:
                    pass

    def read(self, folder: str | os.PathLike, checksum: str, *, count: int | None = None,
             dim: int | None = None) -> bool:
        """Load the saved index if it was built from rows with ``checksum`` and this metric, holds ``count`` keys
        of size ``dim`` (when given: the store's active rows) and the file is intact (size and SHA-256 checked
        before faiss reads it); False otherwise (the caller rebuilds)."""
        import faiss

        folder = Path(folder)
        try:
            meta = json.loads((folder / ROUTER_META).read_text())
            if meta.get("checksum") != checksum or meta.get("metric") != self._metric:
                return False
            if count is not None and (meta.get("ntotal") != count or count and meta.get("dim") != dim):
                return False
            if meta.get("file") is None:
                self.index, self.kind, self._ids, self._trained_n = None, "flat", set(), 0
                return meta.get("ntotal") == 0
            path = folder / str(meta["file"])
            size = path.stat().st_size
            if size != meta.get("bytes") or size > max_index_bytes(int(meta["ntotal"]), int(meta["dim"])):
                return False
            if file_sha256(path) != meta.get("sha256"):
                return False
            index = faiss.read_index(str(path))
            if meta["kind"] == "ivf":
                ivf = faiss.extract_index_ivf(index)
                ivf.nprobe = min(self.nprobe, ivf.nlist)
                inv = ivf.invlists
                ids = np.concatenate([faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                                      for i in range(ivf.nlist)] or [np.zeros(0, np.int64)])
            else:
                ids = faiss.vector_to_array(index.id_map)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, MemoryError):
            return False
        if len(ids) != meta.get("ntotal") or index.ntotal != len(ids) or index.d != meta.get("dim"):
            return False
        self.index, self.kind, self.dim = index, meta["kind"], int(index.d)
        self._ids, self._trained_n = set(ids.tolist()), int(meta.get("trained_n") or 0)
        return True
