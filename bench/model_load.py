"""Load time of the cached SmolLM2-135M, before and after the memory-mapped load, and a cold ``edit generate``.

Each measurement is a fresh interpreter, so every figure is what a new command pays. In each child: the imports
(torch, transformers' Llama code, lifelong's loader) are timed apart from the load itself.

- ``before``: the code before this change, reproduced here: the SHA-256 of the cached safetensors file read in
  4 MiB chunks (``file_sha256``), then ``from_pretrained`` of the cache folder (``_load_hf``).
- ``after``: ``load_causal_lm("smollm2-135m")``: the model built without initialising weights, the memory-mapped
  tensors assigned, the hash checked in a second thread meanwhile.

Both children print the SHA-256 of the weights they loaded (``weights_sha256``), which must be equal. Rounds
alternate before/after so both see the same load. Then ``python -m lifelong edit generate`` is timed from a cold
process (the wall time of the whole command), and its stderr is searched for the "Loading weights" bar.

    .venv/bin/python bench/model_load.py [--repeats 5] [--generate-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str) -> None:
    """One fresh-process measurement; prints one JSON line."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    from lifelong.adapters.lm import model_loading as ml
    from lifelong.platform.atomic import file_sha256
    from lifelong.platform.quiet import quiet_loading_bars  # noqa: F401

    t1, c1 = time.perf_counter(), time.process_time()
    if mode == "before":
        gguf = ml.embedded_gguf_path("smollm2-135m")
        entry = ml.cache_root() / f"gguf-{ml._gguf_sha(gguf, ml.cache_root())[:32]}"
        manifest = json.loads((entry / "lifelong-cache.json").read_text())
        assert file_sha256(entry / "model.safetensors") == manifest["safetensors_sha256"]
        model, _ = ml._load_hf(str(entry), torch.float32)
        model.eval()
    else:
        model, _ = ml.load_causal_lm("smollm2-135m")
    t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({"mode": mode, "import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1,
                      "weights": ml.weights_sha256(model)}))


def run_child(mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True,
                         cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_generate() -> tuple[float, bool, str]:
    """Wall seconds of a cold ``edit generate``, whether the loading bar was printed, and the answer."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lifelong", "edit", "generate", "--prompt",
                          "The capital of France is", "--max-new-tokens", "8"], capture_output=True, text=True,
                         cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, check=True)
    return time.perf_counter() - t0, "Loading weights" in out.stderr + out.stdout, out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--generate-repeats", type=int, default=3)
    ap.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    run_child("after")  # makes the cache entry if there is none yet (not timed)
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.repeats):
        for mode in ("before", "after") if r % 2 == 0 else ("after", "before"):
            res = run_child(mode)
            rows[mode].append(res)
            print(f"round {r} {mode:6s} imports {res['import_s']:.2f} s, load {res['load_s']:.2f} s "
                  f"(CPU {res['load_cpu_s']:.2f} s, both threads) "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    same = {res["weights"] for m in rows for res in rows[m]}
    print(f"weights identical in every load: {len(same) == 1}")
    for mode in rows:
        loads = [res["load_s"] for res in rows[mode]]
        imports = [res["import_s"] for res in rows[mode]]
        cpu = [res["load_cpu_s"] for res in rows[mode]]
        print(f"{mode:6s} load median {statistics.median(loads):.2f} s (min {min(loads):.2f}, max {max(loads):.2f}), "
              f"CPU median {statistics.median(cpu):.2f} s; imports median {statistics.median(imports):.2f} s")
    ratio = statistics.median(r["load_s"] for r in rows["before"]) / statistics.median(
        r["load_s"] for r in rows["after"])
    print(f"before / after (load): {ratio:.2f}")
    walls = []
    for _ in range(args.generate_repeats):
        wall, bar, answer = cold_generate()
        walls.append(wall)
        print(f"cold edit generate {wall:.2f} s, loading bar printed: {bar}, answer {answer!r} "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"cold edit generate median {statistics.median(walls):.2f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
