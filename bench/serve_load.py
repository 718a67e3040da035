"""Load on ``lifelong serve``: N concurrent clients send a fixed number of completions while edits are applied and
rolled back over HTTP; throughput, latency percentiles, errors, partial edits, and the store checked afterwards.

    python bench/serve_load.py [--clients 4 ...] [--max-batch 1 ...] [--batch-wait-ms 10] [--repeats 1]
                               [--requests 40] [--max-tokens 16] [--edits 2] [--cycles 2] [--model NAME]
                               [--cli-writer] [--plain]

The server is the real command (``python -m lifelong serve``) in a subprocess on a free 127.0.0.1 port with a
fresh store and a random token; the clients are threads with the official ``openai`` client. Prompts alternate
between edit prompts of the bundled set (which a writer thread edits and rolls back ``--cycles`` times during the
run; with ``--cli-writer`` every other round is rolled back by ``lifelong edit rollback``, another process on
the store, which the server must notice before its next generation) and their locality prompts. Before the run each edit prompt's greedy output is recorded unedited and edited
(apply, generate, roll back); during the run every answer to an edit prompt must be exactly one of the two, and
carry the matching ``edit_id`` (an answer that is neither is a *partial edit*). Afterwards the store's active
keyed rows must be exactly the ids in its faiss index, and every adapter file must pass its hash.

Batch 1 against dynamic batching: ``--max-batch 1 8`` (and ``--clients 4 8``) runs one cell per (clients, max
batch) pair, each with its own server and fresh store, in interleaved order (``--repeats`` times round), so the
machine's load falls on every setting alike; a table of all cells ends the output. The references are taken one
request at a time on each cell's server; the reference answers of every cell are compared at the end (batching
must not change a greedy answer). Bounded: every request has a timeout, each cell stops after ``--max-seconds``,
each server is stopped at the end of its cell.

``--plain`` then times a plain ``transformers`` generate loop in this process (no server running) on the same
prompts, in batches of each ``--max-batch``, and prints served / plain throughput per cell. With ``--cycles 0`` no
edit is written during the run, so the two sides do the same generations.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[4], help="concurrent clients (one cell per value)")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1],
                    help="the server's --max-batch (one cell per value; 1: no dynamic batching)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="the server's --batch-wait-ms")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over every (clients, max batch) cell")
    ap.add_argument("--requests", type=int, default=40, help="completions in all (spread over the clients)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--edits", type=int, default=2, help="bundled edits the writer applies and rolls back")
    ap.add_argument("--cycles", type=int, default=2, help="apply + rollback rounds of all --edits during the run")
    ap.add_argument("--model", default=None, help="default: smollm2-135m")
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--cli-writer", action="store_true",
                    help="roll back every other cycle with `lifelong edit rollback` (another process on the store)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--plain", action="store_true",
                    help="also time a plain transformers generate loop on the same prompts, in batches of each "
                         "--max-batch, and print served / plain throughput (use --cycles 0 for a like-for-like run)")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="serve-load-"))
    cells = [(r, c, b) for r in range(args.repeats) for c in args.clients for b in args.max_batch]
    results = []
    for r, c, b in cells:
        print(f"--- round {r + 1}, clients {c}, max batch {b}", flush=True)
        work = root / f"r{r}-c{c}-b{b}" if len(cells) > 1 else root
        results.append({"round": r + 1, "clients": c, "max_batch": b, **run_cell(args, c, b, work)})
    if len(cells) > 1:
        print()
        print("| round | clients | max batch | wall s | req/s | p50 s | p99 s | errors | partial edits | mean batch |"
              " rows == index, files ok, restored |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for x in results:
            print(f"| {x['round']} | {x['clients']} | {x['max_batch']} | {x['wall']:.1f} | {x['throughput']:.2f} | "
                  f"{x['p50']:.2f} | {x['p99']:.2f} | {x['errors']} | {x['partial']} | {x['mean_batch']:.2f} | "
                  f"{x['store_ok']} |")
        same = all(x["references"] == results[0]["references"] for x in results)
        print(f"reference answers (unedited and edited) identical in every cell: {same}")
    if args.plain:
        plain = {b: plain_generate(args, b) for b in args.max_batch}
        print()
        print("| clients | max batch | served req/s | plain generate req/s (same batch) | served / plain |")
        print("|---|---|---|---|---|")
        for x in results:
            ratio = x["throughput"] / plain[x["max_batch"]]
            print(f"| {x['clients']} | {x['max_batch']} | {x['throughput']:.2f} | {plain[x['max_batch']]:.2f} | "
                  f"{ratio:.2f} |")


def _bench_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts the clients send, in their order: each edit prompt of the bundled set, then its locality one."""
    recs = [json.loads(x) for x in (ROOT / "lifelong/benchmarks/data/edits-smollm2.jsonl").read_text().splitlines()]
    return [p for r in recs[: args.edits] for p in (r["prompt"], r["locality"][0])]


def plain_generate(args: argparse.Namespace, batch: int) -> float:
    """Requests per second of a plain ``model.generate`` loop (no server, no store, no routing) over the same
    ``--requests`` prompts, greedy, ``--max-tokens`` new tokens, ``batch`` prompts per call, left-padded as the
    server pads a batch; the model loaded as the server loads it. The reference the served throughput is held to."""
    import torch

    from lifelong.adapters.lm.model_loading import load_causal_lm

    model, tok = load_causal_lm(args.model or "smollm2-135m")
    prompts = _bench_prompts(args)
    todo = [prompts[n % len(prompts)] for n in range(args.requests)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    t0 = time.perf_counter()
    for i in range(0, len(todo), batch):
        ids = [tok(p)["input_ids"] for p in todo[i:i + batch]]
        width = max(len(x) for x in ids)
        enc = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            model.generate(input_ids=enc, attention_mask=mask, max_new_tokens=args.max_tokens, do_sample=False,
                           num_beams=1, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    wall = time.perf_counter() - t0
    print(f"plain generate, batch {batch}: {len(todo)} requests in {wall:.1f} s, {len(todo) / wall:.2f} req/s")
    return len(todo) / wall


def run_cell(args: argparse.Namespace, clients: int, max_batch: int, work: Path) -> dict:
    """One server (``--max-batch max_batch``) on a fresh store under ``clients`` clients; prints its figures."""
    import httpx
    import openai

    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    recs = [json.loads(x) for x in (ROOT / "lifelong/benchmarks/data/edits-smollm2.jsonl").read_text().splitlines()]
    recs = recs[: args.edits]
    token, port = secrets.token_hex(16), _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lifelong", "serve", "--store", str(store), "--host", "127.0.0.1", "--port", str(port),
           "--max-tokens", str(max(64, args.max_tokens)), "--max-batch", str(max_batch),
           "--batch-wait-ms", str(args.batch_wait_ms)]
    if args.model:
        cmd += ["--model", args.model]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **os.environ, "LIFELONG_TOKEN": token}
    if (ROOT / ".cache" / "lifelong").is_dir():  # the weight cache the tests use, when there is one
        env.setdefault("LIFELONG_CACHE", str(ROOT / ".cache" / "lifelong"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {work / 'server.log'}")
            time.sleep(0.5)
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        print(f"server up in {time.perf_counter() - t0:.1f} s: {model}, store {store}")
        auth = {"Authorization": f"Bearer {token}"}
        client = openai.OpenAI(base_url=url + "/v1", api_key=token, timeout=300, max_retries=0)

        def complete(c: openai.OpenAI, prompt: str) -> tuple[str, int | None]:
            ch = c.completions.create(model=model, prompt=prompt, max_tokens=args.max_tokens, temperature=0).choices[0]
            return ch.text, ch.model_extra.get("edit_id")

        # reference answers of every edit prompt, unedited and edited
        base, edited = {}, {}
        for r in recs:
            base[r["prompt"]] = complete(client, r["prompt"])[0]
        t = time.perf_counter()
        ids = [e["id"] for e in httpx.post(url + "/v1/edits", json=[{"prompt": r["prompt"], "target": r["target"]}
                                                                    for r in recs], headers=auth, timeout=300).json()["data"]]
        print(f"reference edits applied in {time.perf_counter() - t:.1f} s")
        for r in recs:
            edited[r["prompt"]] = complete(client, r["prompt"])[0]
        for i in ids:
            httpx.delete(f"{url}/v1/edits/{i}", headers=auth, timeout=60)
        for r in recs:
            assert complete(client, r["prompt"])[0] == base[r["prompt"]], "rollback did not restore the output"
        prompts = _bench_prompts(args)

        lat: list[float] = []
        errors: list[str] = []
        partial: list[tuple[str, str, int | None]] = []
        checked = [0]
        writes: list[tuple[str, float]] = []
        done = threading.Event()
        lock = threading.Lock()
        counter = iter(range(args.requests))
        stop_at = time.monotonic() + args.max_seconds

        def worker() -> None:
            c = openai.OpenAI(base_url=url + "/v1", api_key=token, timeout=300, max_retries=0)
            while time.monotonic() < stop_at:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                p = prompts[n % len(prompts)]
                t = time.perf_counter()
                try:
                    text, eid = complete(c, p)
                except Exception as exc:  # counted, the run goes on
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    lat.append(time.perf_counter() - t)
                    if p in base:
                        checked[0] += 1
                        if (text, eid is None) not in {(base[p], True), (edited[p], False)}:
                            partial.append((p, text, eid))

        def writer() -> None:
            for cycle in range(args.cycles):
                if done.is_set():
                    return
                t = time.perf_counter()
                r = httpx.post(url + "/v1/edits", json=[{"prompt": x["prompt"], "target": x["target"]} for x in recs],
                               headers=auth, timeout=300)
                writes.append(("apply", time.perf_counter() - t))
                if r.status_code != 201:
                    errors.append(f"apply: HTTP {r.status_code} {r.text[:200]}")
                    return
                time.sleep(0.5)
                if args.cli_writer and cycle % 2 == 1:  # another process writes to the store; the server must follow
                    t = time.perf_counter()
                    done_cli = subprocess.run([sys.executable, "-m", "lifelong", "edit", "rollback", "--store",
                                               str(store), *(str(e["id"]) for e in r.json()["data"])],
                                              capture_output=True, text=True, timeout=120, env=env)
                    writes.append(("cli-rollback", time.perf_counter() - t))
                    if done_cli.returncode != 0:
                        errors.append(f"cli rollback: {done_cli.stderr.strip()[-200:]}")
                else:
                    for e in r.json()["data"]:
                        t = time.perf_counter()
                        d = httpx.delete(f"{url}/v1/edits/{e['id']}", headers=auth, timeout=60)
                        writes.append(("rollback", time.perf_counter() - t))
                        if d.status_code != 200:
                            errors.append(f"rollback: HTTP {d.status_code}")
                time.sleep(0.5)

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        wt = threading.Thread(target=writer)
        t_run = time.perf_counter()
        for th in threads:
            th.start()
        wt.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t_run
        done.set()
        wt.join()
        health = httpx.get(url + "/healthz").json()
        # every edit is rolled back now (the last round by the CLI with --cli-writer): the unedited answers are back
        restored = all(complete(client, r["prompt"]) == (base[r["prompt"]], None) for r in recs)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    from lifelong.editing.store import EditStore

    with EditStore.open(store, create=False) as st:
        active = {r.id for r in st.active_edits() if r.key is not None}
        indexed = st.router().ids()
        bad = st.verify()
        n_rows = len(st.all_edits())
    applies = [s for k, s in writes if k == "apply"]
    rollbacks = [s for k, s in writes if k == "rollback"]
    cli_rollbacks = [s for k, s in writes if k == "cli-rollback"]
    mean_batch = health["generations"] / max(1, health["batches"])
    batching = f"dynamic batching up to {max_batch}" if max_batch > 1 else "batch 1 (no dynamic batching)"
    print(f"clients {clients}, requests {len(lat) + len(errors)} (max_tokens {args.max_tokens}, greedy), "
          f"{batching}, wall {wall:.1f} s")
    print(f"throughput {len(lat) / wall:.2f} req/s; latency p50 {_pct(lat, 0.5):.3f} s, p99 {_pct(lat, 0.99):.3f} s, "
          f"max {max(lat) if lat else float('nan'):.3f} s")
    print(f"errors {len(errors)}; partial edits seen {len(partial)}; "
          f"answers to edit prompts checked {checked[0]}")
    print(f"writes during the run: {len(applies)} applies of {len(recs)} edits (median {statistics.median(applies) if applies else 0:.2f} s), "
          f"{len(rollbacks)} rollbacks over HTTP (median {statistics.median(rollbacks) if rollbacks else 0:.3f} s), "
          f"{len(cli_rollbacks)} CLI rollback processes (median {statistics.median(cli_rollbacks) if cli_rollbacks else 0:.2f} s)")
    print(f"store afterwards: {n_rows} rows, {len(active)} active keyed, index holds {len(indexed)}, "
          f"rows == index: {active == indexed}, corrupt files: {len(bad)}; server generations {health['generations']} "
          f"in {health['batches']} batches (mean {mean_batch:.2f}, largest {health['largest_batch']})")
    print(f"after the run the server gives every edit prompt its unedited answer again: {restored}")
    for e in errors[:5]:
        print("  error:", e)
    for p in partial[:5]:
        print("  partial:", p)
    sys.stdout.flush()
    return {"wall": wall, "throughput": len(lat) / wall, "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
            "errors": len(errors), "partial": len(partial), "mean_batch": mean_batch,
            "store_ok": active == indexed and not bad and restored, "references": (base, edited)}


if __name__ == "__main__":
    main()
