"""One stored edit as a standard PEFT LoRA adapter folder, and back (``lifelong edit export|import``).

Export writes ``adapter_config.json`` (a ``peft.LoraConfig``) and ``adapter_model.safetensors`` (PEFT's tensor
names) into a new folder, built beside the destination and renamed into place, so ``PeftModel.from_pretrained(base,
folder)`` loads it. Only editors whose class offers ``peft_adapter(config, tensors)`` can export (SoLA, whose edits
are plain LoRAs); GRACE's codebook values and FT-L's weight deltas are refused with a clear error. The editor is
found through the registry by the name the store recorded, so this module imports no editor.

``--with-base`` (``with_base=True``) also writes the base model as a transformers folder (``base-model/`` inside
the adapter folder: config, safetensors weights, tokenizer) and names its absolute path in ``adapter_config.json``'s
``base_model_name_or_path``, so ``AutoPeftModelForCausalLM.from_pretrained(folder)`` and any other PEFT client load
it without ``lifelong`` (a store's model is often ``smollm2-135m``, a GGUF file only ``lifelong`` resolves). Without
it the config names the store's model as the store recorded it, and ``base_reference`` says whether that is
loadable elsewhere. The base is written with ``save_pretrained`` from the model ``lifelong`` loads (for a GGUF
file: its dequantised float32 weights, the same the edit was trained on).

What PEFT cannot express is SoLA's routing: the exported adapter is on for every input, so it gives SoLA's output
on the inputs SoLA routes to that edit (the edit's prompt, close paraphrases) and changes the others too.

Import is the reverse for a store whose editor offers ``from_peft`` (SoLA): the adapter's rank, scale and modules
must be the store's; the routing key is computed from ``--prompt`` exactly as SoLA computes it when it trains an
edit (``key_of``: the first edited module's input at the last prompt token, minus the centre), and the edit goes
into the store through the session (one transaction, like an applied edit). ``import_into`` is the whole
command: everything that needs no model is checked first, and when the store did not exist before, a refused
import (a bad adapter for the new store's config, a model that does not load) removes what it created, so it
leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL
from lifelong.editing.editor import check_edit_text
from lifelong.editing.session import EditSession
from lifelong.editing.store import EditStore
from lifelong.platform import registry
from lifelong.platform.atomic import atomic_folder
from lifelong.platform.config import build_config, load_json_object
from lifelong.platform.errors import UserError, os_error_message

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: what the edit was (prompt, target, store, id); PEFT ignores it
EDIT_INFO = "lifelong_edit.json"
#: the base model written by ``--with-base``, inside the adapter folder
BASE_DIR = "base-model"


def export_peft(store: str | os.PathLike, edit_id: int, out: str | os.PathLike, *, with_base: bool = False) -> Path:
    """Write edit ``edit_id`` of ``store`` as a PEFT LoRA adapter folder ``out`` (which must not exist or be empty);
    ``with_base`` adds the base model as a transformers folder that the adapter config names (``write_base_model``)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder")
    store_path = Path(store)
    if not (store_path / "edits.sqlite").is_file():
        raise UserError(f"{store_path} is not an edit store (no edits.sqlite)")
    with EditStore.open(store_path, create=False) as st:
        rec = st.get(edit_id)
        spec = registry.get("editor", rec.editor)
        to_peft = getattr(spec.factory, "peft_adapter", None)
        if to_peft is None:
            raise UserError(f"edit {rec.id} was made by {rec.editor}, which does not store a LoRA; only SoLA edits "
                            "can be exported as PEFT adapters")
        if not rec.adapter_file:
            raise UserError(f"edit {rec.id} has no stored weights (a key-only row) and cannot be exported")
        tensors = st.load_tensors(rec)  # checks the file's hash
        stored_config = rec.editor_config or (st.editor_spec() or ("", {}))[1]
        model_name = st.meta().get("model_name")
    config = build_config(spec.config, stored_config) if spec.config is not None else None
    try:
        kwargs, state = to_peft(config, tensors)
    except ValueError as exc:
        raise UserError(f"edit {rec.id}: {exc}") from None
    try:  # an empty ``out`` is replaced, a full one refused
        with atomic_folder(out, replace=False, what="--out") as tmp:
            base = base_reference(out, model_name, with_base)
            if with_base:
                write_base_model(model_name, tmp / BASE_DIR)
            LoraConfig(base_model_name_or_path=base, **kwargs).save_pretrained(str(tmp))
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS),
                      metadata={"format": "pt"})
            (tmp / EDIT_INFO).write_text(json.dumps({
                "edit_id": rec.id, "prompt": rec.prompt, "target": rec.target, "status": rec.status,
                "editor": rec.editor, "store": str(store_path), "model_name": model_name, "base_model": base,
            }, indent=1) + "\n")
    except OSError as exc:  # read-only, full disk: atomic_folder has removed its temporary folder, nothing is left
        raise UserError(os_error_message(OSError(exc.errno, exc.strerror), "cannot write the adapter to --out",
                                         out)) from None
    return out


def base_reference(out: Path, model_name: str | None, with_base: bool) -> str | None:
    """What ``adapter_config.json`` names as the base model: the absolute path of the ``base-model/`` folder written
    beside the adapter (``with_base``), else the store's model as recorded (a path or hub id loads elsewhere too;
    an embedded name such as ``smollm2-135m`` only through ``lifelong``: ``is_portable_base`` says which)."""
    if with_base:
        return str((out / BASE_DIR).resolve())
    return model_name


def is_portable_base(model_name: str | None) -> bool:
    """Whether transformers can load ``model_name`` by itself: a model folder with a config.json, or a hub id."""
    if not model_name:
        return False
    path = Path(os.path.expanduser(model_name))
    if path.is_dir():
        return (path / "config.json").is_file()
    return "/" in model_name and not path.suffix and not path.exists()


def write_base_model(model_name: str | None, folder: Path) -> None:
    """The store's base model as a transformers folder (config, safetensors weights, tokenizer) in ``folder``,
    loaded as ``lifelong`` loads it (an embedded GGUF file dequantised to float32, as the edits were trained on)."""
    from lifelong.adapters.lm.model_loading import load_causal_lm

    if not model_name:
        raise UserError("the store records no model name, so --with-base cannot write its base model")
    model, tokenizer = load_causal_lm(model_name)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def read_peft(adapter: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(adapter_config, state dict)`` of a PEFT adapter folder; one clear error for anything missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(adapter)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise UserError(f"--adapter {folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"--adapter {folder} has no {ADAPTER_WEIGHTS} (only safetensors adapters are read)")
    config = load_json_object(folder / ADAPTER_CONFIG)
    _check_lora_numbers(config, folder / ADAPTER_CONFIG)
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"{folder / ADAPTER_WEIGHTS}: cannot be read ({exc})") from None
    for name, tensor in state.items():  # an edit of NaN or inf weights can only produce garbage
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise UserError(f"{folder / ADAPTER_WEIGHTS}: tensor {name} holds NaN or infinite values")
    return config, state


def _check_lora_numbers(config: dict[str, Any], path: Path) -> None:
    """``r`` a positive integer and ``lora_alpha`` a finite positive number, before anything computes with them (a
    null, a huge float or a NaN used to end in a TypeError, OverflowError or a garbage edit)."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if type(r) is not int or not 1 <= r <= 4096:
        raise UserError(f"{path}: field 'r' must be an integer from 1 to 4096, got {json.dumps(r)[:40]}")
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"{path}: field 'lora_alpha' must be a finite positive number, got {json.dumps(alpha)[:40]}")


def check_import(store: str | os.PathLike, adapter: str | os.PathLike, model: str | None = None, *,
                 allow_other_base: bool = False) -> None:
    """What can be checked before the model loads: the adapter folder reads, it was made on the model the edit
    goes to (``check_base``; ``model`` is ``--model``, else the store's), and an existing store's editor can
    import it (``from_peft``) with the store's config (``check_peft_config``: type, rank, scale)."""
    config, _ = read_peft(adapter)
    if not (Path(store) / "edits.sqlite").is_file():
        check_base(adapter, config, model or DEFAULT_MODEL, allow_other_base)
        return
    with EditStore.open(store, create=False) as st:
        spec = st.editor_spec()
        stored_model = st.meta().get("model_name")
    check_base(adapter, config, model or stored_model or DEFAULT_MODEL, allow_other_base)
    if spec is None:
        return
    factory = registry.get("editor", spec[0])
    if not hasattr(factory.factory, "from_peft"):
        raise UserError(f"store {store} holds {spec[0]} edits; only a SoLA store can import a PEFT LoRA adapter")
    check = getattr(factory.factory, "check_peft_config", None)
    if check is not None and factory.config is not None:
        try:
            check(build_config(factory.config, spec[1]), config)
        except ValueError as exc:
            raise UserError(f"--adapter {adapter}: {exc}") from None


def check_base(adapter: str | os.PathLike, config: dict[str, Any], model: str, allow_other_base: bool) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` names another model than ``model`` (a LoRA trained on
    other weights edits this model into garbage), unless ``allow_other_base``. The same model is the same name or
    the same path; an export made with ``--with-base`` names its own ``base-model/`` copy, which is the model its
    ``lifelong_edit.json`` records. An adapter that names no base says nothing to check."""
    named = config.get("base_model_name_or_path")
    if named is None or named == "" or allow_other_base:
        return
    path = Path(adapter) / ADAPTER_CONFIG
    if not isinstance(named, str):
        raise UserError(f"{path}: field 'base_model_name_or_path' must be a string, got {json.dumps(named)[:40]}")
    if _same_model(named, model):
        return
    if _same_model(named, str(Path(adapter) / BASE_DIR)):
        try:
            recorded = json.loads((Path(adapter) / EDIT_INFO).read_text(encoding="utf-8")).get("model_name")
        except (OSError, ValueError, RecursionError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and _same_model(recorded, model):
            return
    raise UserError(f"{path}: the adapter was made for base model {named[:200]!r}, but the edit would go to "
                    f"{model!r}; a LoRA trained on other weights does not fit them (pass --allow-other-base to "
                    "import it anyway)")


def _same_model(a: str, b: str) -> bool:
    """The same model name, or two paths of the same file or folder."""
    if a == b:
        return True
    try:
        pa, pb = Path(os.path.expanduser(a)), Path(os.path.expanduser(b))
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):  # a name with a NUL, a path too long: not a path of the same model
        return False


def import_into(store: str | os.PathLike, adapter: str | os.PathLike, prompt: str, target: str,
                open_session: Callable[[], EditSession], *, model: str | None = None,
                allow_other_base: bool = False) -> Any:
    """``lifelong edit import``: check what needs no model (the prompt and target, ``check_import``), open the
    session (``open_session``, which may create the store), import the adapter; returns the new record. If the store
    is new and the import fails, the files this call created go again (the folder too if it did not exist)."""
    if not prompt.strip():
        raise UserError("--prompt is empty")
    if not target.strip():
        raise UserError("--target is empty")
    check_edit_text(prompt, "prompt", "--prompt")
    check_edit_text(target, "target", "--target")
    check_import(store, adapter, model, allow_other_base=allow_other_base)
    path = Path(store)
    new = not (path / "edits.sqlite").is_file()
    before = set(os.listdir(path)) if path.is_dir() else None
    try:
        session = open_session()
        try:
            return import_peft(session, adapter, prompt, target)
        finally:
            session.close()
    except BaseException:
        if new:
            _remove_created(path, before)
        raise


def _remove_created(path: Path, before: set[str] | None) -> None:
    """Undo the creation of a store by a failed import: remove the entries of ``path`` that were not there
    (``before``; None: the folder itself did not exist). A store that holds edits by then (another writer got in)
    is left alone."""
    try:
        with EditStore.open(path, create=False) as st:
            if st.all_edits():
                return
    except Exception:  # no store came into being, or a half-made one: nothing of another writer's in it
        pass
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in set(os.listdir(path)) - before if path.is_dir() else ():
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def import_peft(session: EditSession, adapter: str | os.PathLike, prompt: str, target: str) -> Any:
    """Add a PEFT LoRA adapter to the session's store as one edit routed by ``prompt``; returns its record."""
    if not prompt.strip():
        raise UserError("--prompt is empty")
    if not target.strip():
        raise UserError("--target is empty")
    check_edit_text(prompt, "prompt", "--prompt")
    check_edit_text(target, "target", "--target")
    editor = session.editor
    from_peft, key_of = getattr(editor, "from_peft", None), getattr(editor, "key_of", None)
    if from_peft is None or key_of is None:
        raise UserError(f"store {session.store.path} holds {session.editor_name} edits; only a SoLA store can "
                        "import a PEFT LoRA adapter")
    config, state = read_peft(adapter)
    try:
        tensors = from_peft(config, state)
    except ValueError as exc:
        raise UserError(f"--adapter {adapter}: {exc}") from None
    with session.lock:
        key = key_of([prompt])[0]
        return session.add_trained(prompt, target, tensors, key, editor.routed.names[0],
                                   {"imported_from": str(Path(adapter).resolve())})
