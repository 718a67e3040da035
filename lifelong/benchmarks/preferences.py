"""Preference pairs for reward models: the bundled set with its fixed split, and JSON Lines loaders.

A preference file holds one pair a line. Three shapes are read (docs/reward.md):

- plain: ``{"prompt": str, "chosen": str, "rejected": str}`` with optional ``dimension`` (what separates the
  pair), ``domain`` and ``id``;
- HH-RLHF (Anthropic): ``{"chosen": str, "rejected": str}`` where both are whole dialogues
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``); the prompt is the dialogue up to the last ``Assistant:`` turn;
- UltraFeedback-binarised: ``{"prompt": str, "chosen": [messages], "rejected": [messages]}`` with chat
  messages ``{"role", "content"}``; the response is the last assistant message.

The bundled set (``data/preferences.jsonl``, built by ``bench/srm_make_preferences.py``) has 446 pairs over
four dimensions (factual, relevance, fluency, style) and a fixed ``train`` / ``heldout`` split made per fact
or question, so no held-out item is seen in training. ``data/preference_facts.jsonl`` is the knowledge source
that the ``fact-check`` branch of the structural reward model reads for it.

RM-Bench and JudgeBench files are read by ``reward_formats`` (``load_pairs``). Errors name the file, the line and the field, and raise ``UserError`` (exit code 2 from the CLI). This module
is a plugin module (it registers the ``preferences`` benchmark), so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lifelong.benchmarks.jsonl import read_jsonl
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_PREFERENCES = DATA_DIR / "preferences.jsonl"
BUNDLED_FACTS = DATA_DIR / "preference_facts.jsonl"
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` is preferred over ``rejected`` as an answer to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    dimension: str | None = None
    id: str | None = None
    #: the benchmark's domain (RM-Bench: chat, code, math, safety; JudgeBench: knowledge, reasoning, ...)
    domain: str | None = None
    #: RM-Bench's difficulty by style: easy, normal or hard (``reward_formats``)
    level: str | None = None


@dataclass(frozen=True)
class Fact:
    """One entry of a knowledge source: ``prompt`` (a statement prefix) is completed by ``target``."""

    prompt: str
    target: str
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"


def _split_hh(dialogue: str, where: str, key: str) -> tuple[str, str]:
    cut = dialogue.rfind(_ASSISTANT)
    if cut < 0:
        raise UserError(f"{where}: field {key!r} has no '\\n\\nAssistant:' turn (HH-RLHF format)")
    prompt = dialogue[: cut + len(_ASSISTANT)]
    return prompt.strip(), dialogue[cut + len(_ASSISTANT):].strip()


def _last_assistant(messages: list[Any], where: str, key: str) -> tuple[str, str]:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: field {key!r}[{i}] must be a message object with a string 'content'")
        if m.get("role") == "assistant":
            context = "\n".join(str(x.get("content", "")) for x in messages[:i] if isinstance(x, dict))
            return context, m["content"]
    raise UserError(f"{where}: field {key!r} has no message with role 'assistant' (UltraFeedback format)")


def parse_pair(obj: dict[str, Any], where: str) -> PreferencePair:
    """Turn one JSON object (plain, HH-RLHF or UltraFeedback-binarised) into a ``PreferencePair``."""
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise UserError(f"{where}: missing field {key!r} (need 'prompt', 'chosen', 'rejected')")
    chosen, rejected = obj["chosen"], obj["rejected"]
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise UserError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
    if isinstance(chosen, list) or isinstance(rejected, list):
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise UserError(f"{where}: fields 'chosen' and 'rejected' must both be strings or both message lists")
        ctx_c, chosen = _last_assistant(chosen, where, "chosen")
        _, rejected = _last_assistant(rejected, where, "rejected")
        prompt = prompt if prompt is not None else ctx_c
    else:
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise UserError(f"{where}: field {key!r} must be a string or a list of messages, got {type(value).__name__}")
        if prompt is None:
            if _ASSISTANT not in chosen:
                raise UserError(f"{where}: missing field 'prompt' (and 'chosen' is not an HH-RLHF dialogue)")
            prompt, chosen = _split_hh(chosen, where, "chosen")
            _, rejected = _split_hh(rejected, where, "rejected")
    if not prompt.strip():
        raise UserError(f"{where}: field 'prompt' is empty")
    if not chosen.strip() or not rejected.strip():
        raise UserError(f"{where}: field {'chosen' if not chosen.strip() else 'rejected'!r} is empty")
    dimension = obj.get("dimension")
    if dimension is not None and (not isinstance(dimension, str) or not dimension.strip()):
        raise UserError(f"{where}: field 'dimension' must be a non-empty string, got {dimension!r}")
    domain = obj.get("domain")
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise UserError(f"{where}: field 'domain' must be a non-empty string, got {domain!r}")
    pid = obj.get("id")
    return PreferencePair(prompt, chosen, rejected, dimension, None if pid is None else str(pid), domain)


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Read a preference JSON Lines file (any of the three shapes, mixed freely)."""
    return [parse_pair(obj, where) for where, _, obj in read_jsonl(path, "preference")]


def bundled_preferences(split: str = "train") -> list[PreferencePair]:
    """The bundled pairs of one split: ``train`` (326), ``heldout`` (120) or ``all``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; allowed values: {', '.join(SPLITS)}")
    out = []
    for where, _, obj in read_jsonl(BUNDLED_PREFERENCES, "preference"):
        if split == "all" or obj.get("split") == split:
            out.append(parse_pair(obj, where))
    return out


def load_facts(path: str | Path) -> list[Fact]:
    """Read a facts JSON Lines file: ``{"prompt": str, "target": str}`` a line (extra keys are kept)."""
    facts = []
    for where, _, obj in read_jsonl(path, "facts"):
        for key in ("prompt", "target"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise UserError(f"{where}: field {key!r} must be a non-empty string")
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "target", "id")}
        facts.append(Fact(obj["prompt"], obj["target"], None if obj.get("id") is None else str(obj["id"]), extra))
    return facts


@dataclass
class PreferencesConfig:
    """Which pairs: the bundled set's ``split``, or a JSON Lines ``path`` (then ``split`` is ignored)."""

    split: Literal["train", "heldout", "all"] = "train"
    path: str | None = None


@register("benchmark", "preferences", config=PreferencesConfig, produces="preference-pairs",
          summary="preference pairs for reward models: bundled set (446 pairs, 4 dimensions) or a JSONL file")
def preferences(config: PreferencesConfig) -> list[PreferencePair]:
    return load_preferences(config.path) if config.path else bundled_preferences(config.split)
