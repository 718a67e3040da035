"""Public reward-model benchmark formats read as preference pairs: RM-Bench and JudgeBench.

- RM-Bench (Liu et al., ICLR 2025; THU-KEG/RM-Bench): one row per prompt, ``{"id", "prompt", "chosen": [3],
  "rejected": [3], "domain"}``; the three responses of each list are the concise, the detailed plain-text and
  the detailed markdown versions (style levels 0, 1, 2). Every chosen × rejected combination is one pair (9 per
  row); as in RM-Bench's own scoring, a pair is ``hard`` when the chosen response has the plainer style (chosen
  level < rejected level: the upper triangle of its 3 × 3 matrix), ``normal`` on the diagonal and ``easy`` below
  it. The domain (``chat``, ``code``, ``math``, ``safety-refuse``, ``safety-response``) is kept; RM-Bench reports
  safety as one domain, so ``safety-*`` is grouped as ``safety``. Read from JSON Lines or from a JSON array
  (the repository ships ``total_dataset.json``).
- JudgeBench (Tan et al., ICLR 2025; ScalerLab/JudgeBench): pairwise rows ``{"pair_id", "original_id",
  "source", "question", "response_model", "response_A", "response_B", "label"}`` with label ``"A>B"`` or
  ``"B>A"`` (a row labelled ``"A=B"`` states no preference and is skipped). The dimension is the ``source``
  (e.g. ``mmlu-pro-law``); the domain is JudgeBench's category of it: ``knowledge`` (mmlu-pro-*),
  ``reasoning`` (livebench-reasoning), ``math`` (livebench-math), ``coding`` (livecodebench).

``load_pairs(path, format)`` reads any of them, or the plain / HH-RLHF / UltraFeedback shapes that
``preferences.load_preferences`` reads (``format="auto"`` tells them apart by the first record). ``grouped_report``
adds accuracy per domain, per level and per domain × level to a scorer's evaluation. Errors name the file, the
line (or array index) and the field, as a ``UserError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from lifelong.benchmarks.jsonl import read_jsonl
from lifelong.benchmarks.preferences import PreferencePair, parse_pair
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register

FORMATS: tuple[str, ...] = ("auto", "preferences", "rm-bench", "judgebench")
LEVELS: tuple[str, ...] = ("easy", "normal", "hard")
JUDGEBENCH_LABELS = {"A>B": "A", "B>A": "B"}


def rm_bench_level(chosen_style: int, rejected_style: int) -> str:
    """RM-Bench's difficulty of a (chosen style, rejected style) cell: ``hard`` when the chosen response is the
    plainer one, ``normal`` for the same style, ``easy`` when the chosen one is the richer one."""
    if chosen_style < rejected_style:
        return "hard"
    return "normal" if chosen_style == rejected_style else "easy"


def rm_bench_domain(domain: str) -> str:
    """RM-Bench's reporting domain: ``safety-refuse`` and ``safety-response`` count as ``safety``."""
    return "safety" if domain.startswith("safety") else domain


def judgebench_domain(source: str) -> str:
    """JudgeBench's category of a ``source``: knowledge, reasoning, math or coding (else the source itself)."""
    if source.startswith("mmlu-pro"):
        return "knowledge"
    if source.startswith("livebench-reasoning"):
        return "reasoning"
    if source.startswith("livebench-math"):
        return "math"
    if source.startswith("livecodebench"):
        return "coding"
    return source


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {key!r} must be a non-empty string")
    return value


def parse_rm_bench(obj: dict[str, Any], where: str) -> list[PreferencePair]:
    """One RM-Bench row as its chosen × rejected pairs, each with its domain and level."""
    prompt, domain = _text(obj, "prompt", where), _text(obj, "domain", where)
    lists = {}
    for key in ("chosen", "rejected"):
        value = obj.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise UserError(f"{where}: field {key!r} must be a non-empty list of non-empty strings (one per style level)")
        lists[key] = value
    rid = str(obj.get("id", where))
    pairs = []
    for i, chosen in enumerate(lists["chosen"]):
        for j, rejected in enumerate(lists["rejected"]):
            pairs.append(PreferencePair(prompt, chosen, rejected, dimension=domain, id=f"{rid}-{i}-{j}",
                                        domain=rm_bench_domain(domain), level=rm_bench_level(i, j)))
    return pairs


def parse_judgebench(obj: dict[str, Any], where: str) -> PreferencePair | None:
    """One JudgeBench row as a pair (``None`` for a tie, which states no preference)."""
    question, source = _text(obj, "question", where), _text(obj, "source", where)
    a, b = _text(obj, "response_A", where), _text(obj, "response_B", where)
    label = obj.get("label")
    if label == "A=B":
        return None
    if label not in JUDGEBENCH_LABELS:
        raise UserError(f"{where}: field 'label' must be 'A>B' or 'B>A' (or 'A=B', skipped), got {label!r}")
    chosen, rejected = (a, b) if JUDGEBENCH_LABELS[label] == "A" else (b, a)
    return PreferencePair(question, chosen, rejected, dimension=source, id=str(obj.get("pair_id", where)),
                          domain=judgebench_domain(source))


def detect_format(obj: dict[str, Any]) -> str:
    """The format of one record: ``judgebench`` (response_A/response_B/label), ``rm-bench`` (lists of strings
    under chosen/rejected and a domain) or ``preferences`` (everything else)."""
    if "response_A" in obj and "response_B" in obj:
        return "judgebench"
    chosen = obj.get("chosen")
    if isinstance(chosen, list) and chosen and all(isinstance(c, str) for c in chosen) and "domain" in obj:
        return "rm-bench"
    return "preferences"


def load_pairs(path: str | Path, format: str = "auto") -> list[PreferencePair]:  # noqa: A002 - the CLI's word
    """Preference pairs from ``path`` in ``format`` (one of ``FORMATS``; ``auto``: told by the first record)."""
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; allowed values: {', '.join(FORMATS)}")
    records = [(where, obj) for where, _, obj in read_jsonl(path, "preference", arrays=True)]
    if format == "auto":
        format = detect_format(records[0][1])
    if format == "preferences":
        return [parse_pair(obj, where) for where, obj in records]
    pairs: list[PreferencePair] = []
    for where, obj in records:
        if format == "rm-bench":
            pairs.extend(parse_rm_bench(obj, where))
        else:
            pair = parse_judgebench(obj, where)
            if pair is not None:
                pairs.append(pair)
    if not pairs:
        raise UserError(f"{path}: no preference pairs (every row was a tie)")
    return pairs


def grouped_report(pairs: Sequence[PreferencePair],
                   evaluate: Callable[[Sequence[PreferencePair]], dict[str, Any]]) -> dict[str, Any]:
    """``evaluate(pairs)`` (a scorer's report: ``accuracy``, ``n_pairs``, ``per_dimension``) with the accuracy per
    domain, per level and per domain × level added where the pairs carry them. Each group is evaluated as its
    own subset, so a scorer that judges a pair as a whole (not one response at a time) is measured the same way."""
    if not pairs:
        raise UserError("no preference pairs to evaluate")
    report = dict(evaluate(pairs))
    keys = {
        "per_domain": lambda p: p.domain,
        "per_level": lambda p: p.level,
        "per_domain_level": lambda p: f"{p.domain}/{p.level}" if p.domain and p.level else None,
    }
    for key, label in keys.items():
        groups: dict[str, list[PreferencePair]] = {}
        for p in pairs:
            g = label(p)
            if g:
                groups.setdefault(g, []).append(p)
        if not groups:
            continue
        order = sorted(groups, key=lambda k: (LEVELS.index(k) if k in LEVELS else -1, k))
        report[key] = {g: {"accuracy": float(evaluate(groups[g])["accuracy"]), "n_pairs": len(groups[g])}
                       for g in order}
    return report


@dataclass
class RMBenchConfig:
    """``path``: an RM-Bench data file (JSON Lines, or the repository's JSON array ``total_dataset.json``)."""

    path: str = ""

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path is required: an RM-Bench data file (e.g. RM-Bench's data/total_dataset.json)")


@dataclass
class JudgeBenchConfig:
    """``path``: a JudgeBench data file (JSON Lines, e.g. ``dataset=judgebench,response_model=gpt-4o-...jsonl``);
    ``category``: keep one domain only (``all``: every row)."""

    path: str = ""
    category: Literal["all", "knowledge", "reasoning", "math", "coding"] = "all"

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path is required: a JudgeBench data file (JSON Lines)")


@register("benchmark", "rm-bench", config=RMBenchConfig, produces="preference-pairs",
          summary="RM-Bench file: every chosen x rejected pair per prompt, with domain and easy/normal/hard level")
def rm_bench(config: RMBenchConfig) -> list[PreferencePair]:
    return load_pairs(config.path, "rm-bench")


@register("benchmark", "judgebench", config=JudgeBenchConfig, produces="preference-pairs",
          summary="JudgeBench file: pairwise A>B / B>A labels, per source and category")
def judgebench(config: JudgeBenchConfig) -> list[PreferencePair]:
    pairs = load_pairs(config.path, "judgebench")
    return pairs if config.category == "all" else [p for p in pairs if p.domain == config.category]
