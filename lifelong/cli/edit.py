"""``lifelong edit``: apply, roll back, list, generate with, evaluate, benchmark, export and import lifelong
edits, and write counterfactual edit sets (``make-set``) (user guide: ``docs/editing.md``; export/import: ``docs/serving.md``).

Every command that needs the language model loads it once, whatever the number of prompts or edits. ``rollback``
and ``list`` only touch the store, so they do not load the model at all. Those that load it take ``--device``
(``auto``: CUDA when present) and ``--precision`` (``fp32``, ``bf16``, ``fp16``); both are checked before the store
is opened, and neither is part of what a store fixes. ``generate`` and ``eval`` without ``--store`` use the
unedited base model (no store is read or made).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lifelong.adapters.lm.model_loading import model_identity
from lifelong.benchmarks.edits import (bundled_edits_path, load_edits, load_prompts, load_retention_set,
                                       natural_edits_path)
from lifelong.cli.options import add_device_options
from lifelong.editing.bench import run_edit_bench
from lifelong.editing.calibrate import calibrate_threshold, read_calibration, store_requests
from lifelong.editing.editor import MAX_TARGET_CHARS, EditRequest, check_edit_text, check_edit_tokens
from lifelong.editing.export import ADAPTER_CONFIG, export_peft, import_into, is_portable_base
from lifelong.editing.metrics import evaluate_store
from lifelong.editing.session import EditSession
from lifelong.editing.store import EditStore
from lifelong.platform import registry
from lifelong.platform.config import build_config, parse_overrides
from lifelong.platform.errors import UserError


def _add_paper_metric_options(parser: argparse.ArgumentParser) -> None:
    """``--trr-file`` and ``--heldout-text``: the retention set of TRR and the held-out text of perplexity."""
    parser.add_argument("--trr-file", default=None,
                        help="TRR retention set: JSON Lines with 'prompt' and optional 'target' (no target: agreement "
                             "with the unedited model); default for bench: a classifier folder's trr.jsonl, else "
                             "every record's locality prompts")
    parser.add_argument("--heldout-text", default=None,
                        help="held-out text for perplexity: a file (one text per line) or 'wordnet' (200 WordNet "
                             "usage examples); language models only")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--token``: send the command to a running ``lifelong serve`` (cli/edit_remote.py)."""
    parser.add_argument("--server", default=None, metavar="URL",
                        help="a running `lifelong serve` (e.g. http://127.0.0.1:8000): its model stays loaded "
                             "between commands; the server's store is used, so no --store")
    parser.add_argument("--token", default=None, help="the server's bearer token (default: $LIFELONG_TOKEN)")


def _remote(args: argparse.Namespace, *local_only: str) -> Any:
    """The server of ``--server``, or None; flags that only make sense locally are refused with it, and a
    command without ``--server`` needs ``--store`` where ``store`` is among ``local_only``'s required."""
    if args.server is None:
        return None
    from lifelong.cli.edit_remote import Remote

    defaults = {"device": "auto", "precision": "fp32", "overrides": []}
    for name in local_only:
        value = getattr(args, name, None)
        if value is not None and value != defaults.get(name):
            flag = "--set" if name == "overrides" else f"--{name.replace('_', '-')}"
            raise UserError(f"{flag} does not go with --server: the server has its own store, model and editor "
                            f"(set them on `lifelong serve`)")
    return Remote(args.server, args.token)


def _retention_set(path: str | None) -> list[tuple[str, str | None]] | None:
    """The ``--trr-file`` records as (prompt, target or None), or None without the flag."""
    return None if path is None else load_retention_set(path)


def _heldout_text(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value == "wordnet":
        from lifelong.benchmarks.wordnet_glosses import heldout_sentences

        return heldout_sentences(200)
    p = Path(value)
    if not p.is_file():
        raise UserError(f"--heldout-text {p} does not exist (give a file, one text per line, or 'wordnet')")
    texts = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise UserError(f"--heldout-text {p} holds no text")
    return texts


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    edit = subparsers.add_parser("edit", help="apply, roll back and evaluate lifelong edits of a language model")
    sub = edit.add_subparsers(dest="edit_command", metavar="ACTION")
    sub.required = True

    ap = sub.add_parser("apply", help="apply edits (one --prompt/--target, or a JSON Lines --file)")
    ap.add_argument("--store", default=None, help="edit store directory (created if missing); or --server")
    ap.add_argument("--model", default=None, help="model: smollm2-135m (default), a .gguf file, an HF folder or hub id")
    ap.add_argument("--editor", default=None, help="editor: sola (default), grace, ft-l; fixed by the store's first edit")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="editor config override (only for a new store), e.g. --set threshold=0.1")
    ap.add_argument("--prompt")
    ap.add_argument("--target")
    ap.add_argument("--file", help="JSON Lines edit file (also ZsRE / CounterFact); validated before any edit")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    add_device_options(ap)
    _add_server_options(ap)
    ap.set_defaults(handler=cmd_apply)

    rb = sub.add_parser("rollback", help="roll edits back by id (rolling back twice is a no-op)")
    rb.add_argument("--store", default=None, help="edit store directory; or --server")
    rb.add_argument("ids", nargs="+", type=int, metavar="ID")
    rb.add_argument("--json", action="store_true")
    _add_server_options(rb)
    rb.set_defaults(handler=cmd_rollback)

    ls = sub.add_parser("list", help="list the store's edits")
    ls.add_argument("--store", default=None, help="edit store directory; or --server")
    ls.add_argument("--json", action="store_true")
    _add_server_options(ls)
    ls.set_defaults(handler=cmd_list)

    gen = sub.add_parser("generate", help="greedy generation with the store's edits in force (no --store: base model)")
    gen.add_argument("--store", default=None, help="edit store directory (default: none, the unedited base model)")
    gen.add_argument("--model", default=None)
    gen.add_argument("--prompt")
    gen.add_argument("--file", help="one prompt per line; one JSON object per line out (JSON Lines), same order")
    gen.add_argument("--max-new-tokens", type=int, default=16)
    gen.add_argument("--json", action="store_true", help="JSON Lines out for --prompt too")
    add_device_options(gen)
    _add_server_options(gen)
    gen.set_defaults(handler=cmd_generate)

    ev = sub.add_parser("eval", help="reliability, generalization and locality of the store's active edits "
                                     "(no --store: of the unedited base model on every record)")
    ev.add_argument("--store", default=None, help="edit store directory (default: none, the unedited base model)")
    ev.add_argument("--model", default=None)
    ev.add_argument("--file", required=True, help="edit file with the paraphrases and locality prompts")
    _add_paper_metric_options(ev)
    ev.add_argument("--json", action="store_true")
    add_device_options(ev)
    ev.set_defaults(handler=cmd_eval)

    ex = sub.add_parser("export", help="write one SoLA edit as a PEFT LoRA adapter folder")
    ex.add_argument("--store", required=True)
    ex.add_argument("--id", type=int, required=True, help="the edit's id (`lifelong edit list`)")
    ex.add_argument("--out", required=True, help="new folder (adapter_config.json, adapter_model.safetensors)")
    ex.add_argument("--with-base", action="store_true",
                    help="also write the base model as a transformers folder (OUT/base-model) and name it in "
                         "adapter_config.json, so AutoPeftModelForCausalLM loads the folder without lifelong")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(handler=cmd_export)

    im = sub.add_parser("import", help="add a PEFT LoRA adapter to a SoLA store as one edit routed by --prompt")
    im.add_argument("--store", required=True, help="edit store directory (created if missing)")
    im.add_argument("--adapter", required=True, help="PEFT adapter folder")
    im.add_argument("--prompt", required=True, help="the prompt whose key routes to the adapter")
    im.add_argument("--target", required=True, help="what the adapter makes the model say (recorded in the store)")
    im.add_argument("--model", default=None)
    im.add_argument("--allow-other-base", action="store_true",
                    help="import an adapter whose adapter_config.json names another base model than the store's")
    im.add_argument("--json", action="store_true")
    add_device_options(im)
    im.set_defaults(handler=cmd_import)

    _add_data_parsers(sub)


def _add_data_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands that make data or measure: train-classifier, bench, calibrate, make-set."""
    tc = sub.add_parser("train-classifier",
                        help="train the WordNet-gloss classifier (MiniLM encoder + linear head) into a run folder "
                             "that apply/eval/bench edit with --model")
    tc.add_argument("--out", required=True, help="new folder: weights, config, edits.jsonl, trr.jsonl")
    tc.add_argument("--train-per-class", type=int, default=60, help="training glosses per class (default 60)")
    tc.add_argument("--test-per-class", type=int, default=20, help="held-out TRR glosses per class (default 20)")
    tc.add_argument("--pool-per-class", type=int, default=60,
                    help="glosses per class whose misclassified ones become edits (default 60)")
    tc.add_argument("--epochs", type=int, default=300)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--wordnet-root", default=None, help="WordNet 3.0 folder (default: /usr/share/wordnet)")
    tc.add_argument("--json", action="store_true")
    tc.set_defaults(handler=cmd_train_classifier)

    be = sub.add_parser("bench", help="sequential editing benchmark on a fresh store, with rollback of half")
    be.add_argument("--editor", required=True)
    be.add_argument("--file", default=None, help="edit file (default: the bundled edits-smollm2.jsonl; for a "
                                                 "classifier folder, its edits.jsonl)")
    be.add_argument("--every", type=int, default=None,
                    help="ERR/TRR/perplexity checkpoint every N edits (default: a tenth of the stream)")
    _add_paper_metric_options(be)
    be.add_argument("--n", type=int, default=None, help="number of edits (default: all)")
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--out", default=None, help="output folder (default runs/edit-bench-<editor>-<seed>/)")
    be.add_argument("--model", default=None)
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    be.add_argument("--json", action="store_true", help="print results.json instead of the summary")
    be.add_argument("--calibration", default=None, metavar="CAL.json",
                    help="the output of `edit calibrate --out`: SoLA's threshold (unless --set threshold=...) and "
                         "the edits it was chosen on, which this bench then refuses to report on")
    add_device_options(be)
    be.set_defaults(handler=cmd_bench)

    ca = sub.add_parser("calibrate", help="choose SoLA's routing threshold on a development edit file (paraphrases "
                                          "and locality prompts): the largest one that keeps --locality of the "
                                          "unrelated prompts unrouted")
    ca.add_argument("--file", default=None, help="development edits (JSON Lines with paraphrases and locality, "
                                                 "e.g. `edit make-set --split dev`); not the edits you report on. "
                                                 "Without it, --store calibrates on the store's own edits")
    ca.add_argument("--locality", type=float, default=0.98,
                    help="share of locality prompts that must stay unrouted (default 0.98)")
    ca.add_argument("--n", type=int, default=None, help="only the first N records of the file")
    ca.add_argument("--model", default=None)
    ca.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="SoLA config of the store to be (key_layer, key_module, key_pooling, center_keys, layers)")
    ca.add_argument("--json", action="store_true", help="print JSON only")
    ca.add_argument("--out", default=None, help="also write the JSON here (what edit bench --calibration reads); it "
                                                "records the file's SHA-256 and the ids of the edits calibrated on")
    ca.add_argument("--store", default=None, help="an existing edit store: record the threshold and what it was "
                                                  "calibrated on in its meta data; the store routes with it from "
                                                  "then on. Without --file: calibrate on the paraphrases and "
                                                  "locality prompts its active edits were applied with")
    add_device_options(ca)
    ca.set_defaults(handler=cmd_calibrate)

    ms = sub.add_parser("make-set", help="write a counterfactual edit set built from WordNet 3.0, or the "
                                         "hand-written natural set (JSON Lines, the format apply/eval --file read; "
                                         "docs/editing.md)")
    ms.add_argument("--source", required=True, choices=["wordnet", "natural"],
                    help="wordnet: built from WordNet 3.0 templates; natural: the packaged hand-written set "
                         "(64 edits, 16 relations, natural paraphrases; a test set, no split)")
    ms.add_argument("--split", default=None, choices=["dev", "test", "all"],
                    help="WordNet only: dev (to choose settings on), test (to report on, the default) or both; "
                         "disjoint in synsets")
    ms.add_argument("--out", required=True, help="the JSON Lines file to write")
    ms.add_argument("--n", type=int, default=None, help="only the first N edits of the split")
    ms.add_argument("--wordnet-root", default=None, help="WordNet 3.0 folder (default $LIFELONG_WORDNET or "
                                                         "/usr/share/wordnet)")
    ms.add_argument("--min-count", type=int, default=1, help="least concordance count of a subject (default 1)")
    ms.set_defaults(handler=cmd_make_set)


def _session(args: argparse.Namespace, *, editor: str | None = None, overrides: dict | None = None,
             create: bool = True, readonly: bool = False, quiet: bool = False) -> Any:
    """The session of a command; ``args.store`` None: the unedited base model."""
    return EditSession(args.store, model=getattr(args, "model", None), editor=editor,
                       editor_config=overrides, create=create, device=args.device, precision=args.precision,
                       readonly=readonly, quiet=quiet)


def _require_store(path: str) -> None:
    p = Path(path)
    if not (p / "edits.sqlite").is_file():
        raise UserError(f"{p} is not an edit store (no edits.sqlite); create one with `lifelong edit apply`")


def cmd_apply(args: argparse.Namespace) -> int:
    if args.file and (args.prompt or args.target):
        raise UserError("give either --file or --prompt/--target, not both")
    if not args.file:
        if args.prompt is None or args.target is None:
            raise UserError("edit apply needs --prompt and --target (or --file)")
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        if not args.target.strip():
            raise UserError("--target is empty")
        check_edit_text(args.prompt, "--prompt", "")
        check_edit_text(args.target, "--target", "", max_chars=MAX_TARGET_CHARS)
    overrides = parse_overrides(args.overrides)
    if args.file:  # validate the whole file before the model is even loaded
        requests = load_edits(args.file)
    else:
        requests = [EditRequest(prompt=args.prompt, target=args.target)]
    remote = _remote(args, "store", "model", "editor", "overrides", "device", "precision")
    if remote is not None:
        _print_applied(remote.apply(requests, lambda line: print(line, file=sys.stderr)), args.json)
        return 0
    if args.store is None:
        raise UserError("edit apply needs --store DIR (or --server URL of a running `lifelong serve`)")
    session = _session(args, editor=args.editor, overrides=overrides or None)
    ok = False
    try:
        max_tokens = int(getattr(session.model.config, "max_position_embeddings", 0) or 0)
        if args.file:
            requests = load_edits(args.file, tokenizer=session.tokenizer, max_tokens=max_tokens)
        else:
            check_edit_tokens(session.tokenizer, args.prompt, args.target, "--prompt and --target", max_tokens)
        applied = []
        for i, req in enumerate(requests, 1):
            t0 = time.perf_counter()
            extra: dict[str, Any] = {"request_id": req.id} if req.id is not None else {}
            # kept with the edit, so that `edit calibrate --store` can choose the store's threshold on them later
            extra.update({k: v for k, v in (("paraphrases", req.paraphrases), ("locality", req.locality)) if v})
            rec = session.apply(req.prompt, req.target, extra)
            applied.append({"id": rec.id, "prompt": rec.prompt, "target": rec.target})
            print(f"[{i}/{len(requests)}] edit {rec.id}: {req.prompt!r} -> {req.target!r} "
                  f"({time.perf_counter() - t0:.1f} s, {rec.extra.get('steps')} steps)", file=sys.stderr)
        ok = True
        if session.defaults_note:  # the threshold the store routes with, and why (after success: errors stay one line)
            print(session.defaults_note, file=sys.stderr)
    finally:
        if not ok and session.store is not None:
            session.store.discard_if_empty()  # a refused first apply leaves no empty store folder
        session.close()
    _print_applied(applied, args.json)
    return 0


def _print_applied(applied: list[dict[str, Any]], as_json: bool) -> None:
    applied = [{"id": a["id"], "prompt": a["prompt"], "target": a["target"]} for a in applied]
    if as_json:
        print(json.dumps({"applied": applied}))
    else:
        for a in applied:
            print(f"applied edit {a['id']}: {a['prompt']!r} -> {a['target']!r}")


def _store_or_server(args: argparse.Namespace, command: str) -> Any:
    remote = _remote(args, "store")
    if remote is None:
        if args.store is None:
            raise UserError(f"edit {command} needs --store DIR (or --server URL of a running `lifelong serve`)")
        _require_store(args.store)
    return remote


def cmd_rollback(args: argparse.Namespace) -> int:
    remote = _store_or_server(args, "rollback")
    if remote is not None:
        out = remote.rollback(args.ids)
    else:
        with EditStore.open(args.store, create=False) as store:
            out = store.rollback(args.ids)
    changed = [i for i, c in out if c]
    already = [i for i, c in out if not c]
    if args.json:
        print(json.dumps({"rolled_back": changed, "already_rolled_back": already}))
    else:
        for i in changed:
            print(f"rolled back edit {i}")
        for i in already:
            print(f"edit {i} was already rolled back (nothing to do)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    remote = _store_or_server(args, "list")
    if remote is not None:
        rows, bad = remote.edits(), {}
    else:
        with EditStore.open(args.store, create=False, readonly=True) as store:
            rows = [r.as_dict() for r in store.all_edits()]
            bad = dict(store.verify())
    for r in rows:
        if r["id"] in bad:
            r["problem"] = bad[r["id"]]
    if args.json:
        print(json.dumps(rows))
    else:
        if not rows:
            print("(no edits)")
        for r in rows:
            flag = f"  !! {r['problem']}" if "problem" in r else ""
            print(f"{r['id']:>5}  {r['status']:<11}  {r['editor']:<6}  {r['prompt']!r} -> {r['target']!r}{flag}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = export_peft(args.store, args.id, args.out, with_base=args.with_base)
    base = json.loads((out / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if args.json:
        print(json.dumps({"exported": args.id, "out": str(out), "base_model": base}))
    else:
        print(f"exported edit {args.id} to {out} (PEFT LoRA adapter; base model: {base})")
    if not args.with_base and not is_portable_base(base):
        print(f"note: adapter_config.json names the base model {base!r}, which only lifelong resolves; "
              f"export with --with-base to write a base model other tools load", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    # checks before the model loads; a refused import into a new store removes what it created
    editor = "sola" if not Path(args.store, "edits.sqlite").is_file() else None
    rec = import_into(args.store, args.adapter, args.prompt, args.target, lambda: _session(args, editor=editor),
                      model=args.model, allow_other_base=args.allow_other_base)
    if args.json:
        print(json.dumps({"imported": rec.id, "prompt": rec.prompt, "target": rec.target}))
    else:
        print(f"imported {args.adapter} as edit {rec.id}: {rec.prompt!r} -> {rec.target!r}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if bool(args.prompt) == bool(args.file):
        raise UserError("edit generate needs exactly one of --prompt or --file")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    prompts = load_prompts(args.file) if args.file else [check_edit_text(args.prompt, "--prompt", "")]
    remote = _remote(args, "store", "model", "device", "precision")
    if remote is not None:
        _print_generations(remote.generate(prompts, args.max_new_tokens), args.json or bool(args.file))
        return 0
    if args.store is not None:
        _require_store(args.store)
    session = _session(args, create=False, readonly=True)
    try:
        _print_generations(session.generate(prompts, max_new_tokens=args.max_new_tokens),
                           args.json or bool(args.file))
    finally:
        session.close()
    return 0


def _print_generations(results: Any, json_lines: bool) -> None:
    """One line per prompt as it is done: JSON Lines (``--file`` or ``--json``) or the text with its edit."""
    for res in results:
        row = {"prompt": res["prompt"], "completion": res["completion"], "edit_id": res["edit_id"]}
        if json_lines:
            print(json.dumps(row), flush=True)
        else:
            tag = f"  [edit {row['edit_id']}]" if row["edit_id"] is not None else ""
            print(f"{row['prompt']}{row['completion']}{tag}", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    requests = load_edits(args.file)
    retention, heldout = _retention_set(args.trr_file), _heldout_text(args.heldout_text)
    if args.store is not None:
        _require_store(args.store)
    session = _session(args, create=False, readonly=True, quiet=True)  # the damaged edits are the error below
    try:
        if session.problems:  # a reliability over the other edits would hide the damaged ones
            raise UserError(f"store {args.store} has {len(session.problems)} active edit(s) that cannot be loaded: "
                            + "; ".join(msg for _, msg in session.problems)
                            + "; roll them back or re-apply them, then evaluate")
        if session.store is None:  # the unedited base model on every record (a baseline for a store's numbers)
            matched = list(requests)
        else:
            active = {r.prompt for r in session.store.active_edits() if r.id in set(session.loaded_ids)}
            matched = [r for r in requests if r.prompt in active]
            if not matched:
                raise UserError(f"none of the {len(requests)} records of {args.file} is an active edit of store "
                                f"{args.store}")
        res = evaluate_store(session, matched, retention=retention, heldout_text=heldout)
        res["n_not_in_store"] = len(requests) - len(matched)
        res["store"] = args.store
    finally:
        session.close()
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    """Train the gloss classifier and write it with its edit set and retention set
    (``benchmarks.wordnet_glosses.make_gloss_classifier``)."""
    from lifelong.benchmarks.wordnet_glosses import make_gloss_classifier

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out} exists; name a new folder")
    for name in ("train_per_class", "test_per_class", "pool_per_class", "epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    record = make_gloss_classifier(out, wordnet_root=args.wordnet_root, train_per_class=args.train_per_class,
                                   test_per_class=args.test_per_class, pool_per_class=args.pool_per_class,
                                   epochs=args.epochs, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps({"out": str(out), **record}))
    else:
        print(f"trained {out}: test accuracy {record['test_accuracy']:.3f} ({record['n_test']} glosses), train "
              f"{record['train_accuracy']:.3f}; {record['n_edits']} misclassified held-out glosses in "
              f"{out / 'edits.jsonl'}, retention set {out / 'trr.jsonl'} ({record['seconds']:.0f} s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    registry.get("editor", args.editor)  # an unknown editor fails before anything loads
    clf = args.model is not None and (Path(args.model) / "classifier.json").is_file()
    if args.file is None and clf and not (Path(args.model) / "edits.jsonl").is_file():
        raise UserError(f"classifier folder {args.model} has no edits.jsonl; give --file")
    path = args.file or (str(Path(args.model) / "edits.jsonl") if clf else str(bundled_edits_path()))
    requests = load_edits(path)
    trr_path = args.trr_file or (str(Path(args.model) / "trr.jsonl") if clf and (Path(args.model) / "trr.jsonl").is_file()
                                 else None)
    retention, heldout = _retention_set(trr_path), _heldout_text(args.heldout_text)
    if args.every is not None and args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    if args.n is not None and not 1 <= args.n <= len(requests):
        raise UserError(f"--n must be between 1 and {len(requests)} (the edits in {path}), got {args.n}")
    out = Path(args.out or f"runs/edit-bench-{args.editor}-{args.seed}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; name a folder (created if missing)")
    calibration = read_calibration(args.calibration) if args.calibration else None
    res = run_edit_bench(args.editor, requests, n=args.n, seed=args.seed, out=out, model=args.model,
                         editor_config=parse_overrides(args.overrides) or None, source=path,
                         device=args.device, precision=args.precision, every=args.every, retention=retention,
                         heldout_text=heldout, calibration=calibration)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        s = res["after_stream"]
        print(f"editor {res['editor']}, {res['n_edits']} sequential edits from {path} (seed {res['seed']}, "
              f"{res['device']}, {res['precision']})")
        print(f"  right after each edit: reliability {res['right_after']['reliability']:.3f}  "
              f"generalization {_fmt(res['right_after']['generalization'])}  locality {_fmt(res['right_after']['locality'])}")
        print(f"  after the whole stream: reliability {s['reliability']:.3f}  generalization {_fmt(s['generalization'])}  "
              f"locality {_fmt(s['locality'])}")
        rb = res["rollback"]
        print(f"  rolled back {rb['n_rolled_back']}: fidelity {rb['fidelity']:.3f}  retention {rb['retention']:.3f}")
        print(f"  seconds per edit: median {res['seconds_per_edit']['median']:.2f}  mean {res['seconds_per_edit']['mean']:.2f}")
        print(f"  {'edits':>6} {'ERR':>6} {'TRR':>6} {'ppl':>8}   (TRR before any edit: {_fmt(res['trr_before'])})")
        for row in res["curves"][1:]:
            ppl = row.get("perplexity")
            print(f"  {row['n_edits']:>6} {_fmt(row['err']):>6} {_fmt(row['trr']):>6} "
                  f"{'n/a' if ppl is None else f'{ppl:.2f}':>8}")
        ov = res.get("generation_overhead")
        if ov and ov.get("ratio") is not None:
            print(f"  routed / unedited generation time: {ov['ratio']:.3f}; store {res['store_bytes'] / 1e6:.2f} MB")
        print(f"  wrote {out / 'results.json'}, curves.csv, edit_metrics.png and paper_metrics.png")
    return 0


def _calibration_input(args: argparse.Namespace, store: EditStore | None
                       ) -> tuple[list[EditRequest], dict[str, Any], str | None]:
    """The edits to calibrate on, the SoLA config of the keys and the model name: the --file's edits with the
    --set overrides, or (--store alone) the store's active edits with the config and model they were made with."""
    overrides = parse_overrides(args.overrides)
    build_config(registry.get("editor", "sola").config, overrides)  # a bad key or value fails before the model loads
    if args.file:
        return load_edits(args.file), overrides, args.model
    if store is None:
        raise UserError("edit calibrate needs --file DEV.jsonl, or --store STORE to calibrate on a store's own edits")
    if overrides:
        raise UserError("--set is not used with --store alone: the store's SoLA config (the one its edits were made "
                        "with) sets the key")
    spec = store.editor_spec()
    if spec is None or spec[0] != "sola":
        raise UserError(f"--store {args.store}: holds {'no edits' if spec is None else repr(spec[0]) + ' edits'}; "
                        "calibration chooses the routing threshold of a store of SoLA edits")
    return store_requests(store), dict(spec[1]), args.model or store.meta().get("model_name")


def cmd_calibrate(args: argparse.Namespace) -> int:
    if not 0.0 < args.locality <= 1.0:
        raise UserError(f"--locality must be in (0, 1], got {args.locality}")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise UserError(f"--out {out}: name a JSON file in an existing folder")
    store = EditStore.open(args.store, create=False) if args.store else None  # a missing store fails before work
    requests, overrides, model = _calibration_input(args, store)
    requests = requests[: args.n] if args.n is not None else requests
    base = EditSession(None, model=model, device=args.device, precision=args.precision, quiet=True)
    if store is not None:
        store.check_model(model_identity(base.model))  # a store's edits are keyed by its own model only
    source = args.file or f"store {args.store}"
    res = calibrate_threshold(requests, base.model, base.tokenizer, editor_config=overrides,
                              locality=args.locality, precision=base.precision, source=args.file)
    if not args.file:
        res["calibrated_on"]["store"] = str(args.store)
    res["file"] = args.file
    if out is not None:
        from lifelong.platform.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    if store is not None:
        with store:
            store.record_calibration({k: res[k] for k in ("threshold", "locality_target", "locality_kept",
                                                          "paraphrases_routed", "calibrated_on", "key")})
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"SoLA routing on {res['n_edits']} edits of {source} ({res['n_paraphrases']} paraphrases, "
          f"{res['n_locality']} locality prompts; ROC area {res['auc']:.3f})")
    print(f"  threshold {res['threshold']:.4f}: {res['locality_kept']:.3f} of the locality prompts unrouted "
          f"(target {args.locality}), {res['paraphrases_routed']:.3f} of the paraphrases routed to their edit")
    print(f"  configured threshold {res['configured_threshold']:.4f}: {res['configured']['locality_kept']:.3f} "
          f"unrouted, {res['configured']['paraphrases_routed']:.3f} routed")
    print(f"  use it on a new store: lifelong edit apply --store NEW --set threshold={res['threshold']:.4f} ...")
    on = res["calibrated_on"]
    print(f"  calibrated on {on['n_edits']} edits (ids hash {on['ids_sha256'][:12]}, file sha256 "
          f"{(on['file_sha256'] or '-')[:12]}){f'; written to {out}' if out else ''}"
          f"{f'; recorded in store {args.store}' if store is not None else ''}")
    return 0


def cmd_make_set(args: argparse.Namespace) -> int:
    from lifelong.benchmarks.wordnet_edits import wordnet_edit_set
    from lifelong.platform.atomic import atomic_write_text

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the JSON Lines file to write")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.source == "natural":
        if args.split is not None:
            raise UserError("--split applies to --source wordnet only; the natural set has no split (report on "
                            "all of it)")
        src, what = natural_edits_path(), "the hand-written natural set"
    else:
        split = args.split or "test"
        src, what = wordnet_edit_set(split, root=args.wordnet_root, min_count=args.min_count), f"WordNet {split} split"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[: args.n]
    atomic_write_text(out, "".join(lines))
    print(f"wrote {len(lines)} edits ({what}) to {out}")
    return 0


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
