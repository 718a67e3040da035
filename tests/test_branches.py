"""Side branches as plugins (registry kind ``branch``): the built-ins, per-branch options, third-party branches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from lifelong.benchmarks.preferences import PreferencePair
from lifelong.benchmarks.wordnet import wordnet_available
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create, get, list_plugins, register
from lifelong.scorers import branches as sb

REPO = Path(__file__).resolve().parents[1]


def test_the_builtin_branches_are_registered_with_typed_configs() -> None:
    specs = {s.name: s for s in list_plugins("branch")}
    assert set(sb.BRANCH_NAMES) <= set(specs)
    for name in sb.BRANCH_NAMES:
        spec = specs[name]
        assert spec.kind == "branch" and spec.source == "builtin" and spec.config is not None
        assert spec.module.startswith("lifelong.scorers.branches.")
    assert specs["quality"].config is sb.QualityConfig and specs["fact-check"].config is sb.FactCheckConfig


def test_plugins_list_has_the_branch_kind(cli) -> None:
    result = cli("plugins", "list", "--kind", "branch", "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["plugins"]
    assert {r["kind"] for r in rows} == {"branch"} and set(sb.BRANCH_NAMES) <= {r["name"] for r in rows}
    assert next(r for r in rows if r["name"] == "style")["config"] == "StyleConfig"


def test_scorer_wide_settings_fill_each_branch_config_and_branch_options_override() -> None:
    settings = sb.BranchSettings(llm="lm-a", batch_size=4, fact_threshold=0.3, device="cpu")
    q = sb.build_branch_config("quality", settings, {"max_new_tokens": 2, "batch_size": 1})
    assert (q.llm, q.batch_size, q.max_new_tokens, q.device) == ("lm-a", 1, 2, "cpu")
    f = sb.build_branch_config("fact-check", settings)
    assert f.fact_threshold == 0.3 and not hasattr(f, "llm")  # only the fields a branch has are filled
    with pytest.raises(UserError, match="unknown config key 'quality.nope' for QualityConfig"):
        sb.build_branch_config("quality", settings, {"nope": 1})


@pytest.mark.parametrize("config, message", [
    ({"branches": ["style", "quality"], "branch_config": {"quality": {"max_new_tokens": 0}}},
     "quality: max_new_tokens must be >= 1, got 0"),
    ({"branches": ["style"], "branch_config": {"semantic": {"encoder": "x"}}},
     "options for branch 'semantic', which branches does not name"),
    ({"branches": ["style", "smell"]}, "unknown branch 'smell'; allowed values: semantic, fact-check, style"),
    ({"branches": ["fact-check"], "branch_config": {"fact-check": {"facts": ["/no/such.jsonl"]}}},
     "fact-check: facts: file /no/such.jsonl not found"),
])
def test_bad_branch_options_fail_before_any_work(config, message) -> None:
    with pytest.raises(UserError, match=message):
        create("scorer", "srm", **config)


@dataclass
class _VowelConfig:
    scale: float = 1.0


@register("branch", "test-vowels", config=_VowelConfig, summary="vowel share (a test branch)")
class _VowelBranch(sb.Branch):
    feature_names = ("vowel_share",)

    def __init__(self, config: _VowelConfig) -> None:
        self.config = config

    def compute(self, items: Sequence[tuple[str, str]]) -> list[sb.BranchOutput]:
        out = []
        for _, r in items:
            share = sum(c in "aeiou" for c in r.lower()) / max(1, len(r))
            out.append(sb.BranchOutput((self.config.scale * share,), f"vowels: {share:.2f}"))
        return out


def test_a_branch_registered_elsewhere_is_a_dimension_of_srm(tmp_path: Path) -> None:
    assert get("branch", "test-vowels").factory is _VowelBranch
    (built,) = sb.make_branches(["test-vowels"], branch_config={"test-vowels": {"scale": 2.0}})
    assert built.name == "test-vowels" and built.config.scale == 2.0  # the registered name is the branch's name
    pairs = [PreferencePair(f"Say something about item {i}.", "aeiou eau oui" * (1 + i % 2), "xyz brr pfft")
             for i in range(6)]
    rm = create("scorer", "srm", branches=["style", "test-vowels"], epochs=3, cache_dir=":memory:", hidden=8)
    rm.fit(pairs)
    res = rm.score(pairs[0].prompt, pairs[0].chosen)
    assert set(res.contributions) == {"text", "style", "test-vowels"}
    assert res.branch_texts["test-vowels"].startswith("vowels: ")
    assert sum(res.contributions.values()) == pytest.approx(res.reward, abs=1e-4)


def test_a_factory_that_returns_no_branch_is_refused() -> None:
    register("branch", "test-not-a-branch", config=_VowelConfig)(lambda config: object())
    with pytest.raises(UserError, match="returned object, not a Branch"):
        sb.make_branches(["test-not-a-branch"])


def test_the_example_package_adds_a_branch_through_its_entry_point(tmp_path: Path, cli) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(REPO / "examples" / "lifelong-nearest-mean")],
        check=True, capture_output=True, text=True,
    )
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    rows = json.loads(cli("plugins", "list", "--kind", "branch", "--json", env=env).stdout)["plugins"]
    hedging = next(r for r in rows if r["name"] == "hedging")
    assert hedging["source"] == "lifelong-nearest-mean" and hedging["config"] == "HedgingConfig"
    code = ("from lifelong.scorers.branches import make_branches\n"
            "(b,) = make_branches(['hedging'], branch_config={'hedging': {'hedges': ['maybe', 'i think']}})\n"
            "sure, unsure = b.compute([('Q?', 'It is Canberra.'), ('Q?', 'Maybe Canberra, I think.')])\n"
            "assert sure.features == (0.0, 0.0), sure\n"
            "assert unsure.features[1] == 1.0 and unsure.features[0] > 0, unsure\n"
            "print(unsure.text)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "hedging: 2 hedge(s) (i think, maybe)"


# ------------------------------------------------------------------------------------------- entity-background
def _geo_wordnet(folder: Path) -> Path:
    """A small WordNet in the real format with a hierarchy deep enough for sibling swaps."""
    from _wordnet_files import Synset, write_wordnet

    return write_wordnet(folder, [
        Synset("entity", ["entity"], "noun.Tops", "that which is perceived to have its own distinct existence"),
        Synset("location", ["location"], "noun.Tops", "a point or extent in space", pointers=[("@", "entity")]),
        Synset("region", ["region"], "noun.location", "a large indefinite location on the surface of the Earth",
               pointers=[("@", "location")]),
        Synset("country", ["country", "state"], "noun.location", "a politically organized body of people",
               pointers=[("@", "region")]),
        Synset("city", ["city", "metropolis"], "noun.location", "a large and densely populated urban area",
               pointers=[("@", "region")]),
        Synset("national_capital", ["national capital"], "noun.location", "the capital city of a nation",
               pointers=[("@", "city")]),
        Synset("australia", ["Australia", "Commonwealth of Australia"], "noun.location",
               "a nation occupying the whole of the Australian continent",
               pointers=[("@i", "country"), ("%p", "canberra")]),
        Synset("new_zealand", ["New Zealand"], "noun.location", "an independent country within the Commonwealth",
               pointers=[("@i", "country")]),
        Synset("canberra", ["Canberra", "capital of Australia"], "noun.location",
               "the capital of Australia; located in southeastern Australia",
               pointers=[("@i", "national_capital"), ("#p", "australia")]),
    ])


def test_entity_background_text_from_wordnet(tmp_path: Path) -> None:
    root = str(_geo_wordnet(tmp_path / "wn"))
    text = sb.entity_background("Where is Canberra?", wordnet_root=root)
    assert text == ("canberra: the capital of Australia; located in southeastern Australia; is a national capital; "
                    "part of Australia")
    both = sb.entity_background("Which country is Canberra in?", "It is in Australia.", wordnet_root=root)
    assert both.startswith("country: a politically organized body of people; is a region") and "| australia:" in both
    assert sb.entity_background("How are you today?", wordnet_root=root) == ""


def test_entity_branch_features_agree_and_disagree_with_wordnet(tmp_path: Path) -> None:
    root = str(_geo_wordnet(tmp_path / "wn"))
    (branch,) = sb.make_branches(["entity-background"], branch_config={"entity-background": {"wordnet_root": root}})
    names = branch.feature_names
    right, swapped, silent, none = branch.compute([
        ("Where is Canberra?", "Canberra is a city in Australia."),
        ("Where is Canberra?", "Canberra is a city in New Zealand."),
        ("Where is Canberra?", "I would rather not say."),
        ("How are you today?", "Fine, thanks."),
    ])
    f = lambda out, key: out.features[names.index(key)]  # noqa: E731
    assert f(right, "supported_claims") == 2 and f(right, "contradicted_claims") == 0  # a city; in Australia
    assert f(swapped, "contradicted_claims") == 1 and "'canberra ... new zealand' disagrees" in swapped.text
    assert f(right, "related_mention_share") == 1.0 and f(silent, "related_mention_share") == 0.0
    assert none.features == (0.0, 0.0, 0.0, 0.0) and "no WordNet entity found" in none.text
    assert right.text.startswith("entity background: canberra: the capital of Australia")
    assert root in branch.fingerprint()  # another database never reads this one's cached outputs


def test_entity_branch_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="entity-background: max_entities must be >= 1"):
        create("scorer", "srm", branches=["entity-background"], branch_config={"entity-background": {"max_entities": 0}})
    with pytest.raises(UserError, match="entity-background: WordNet 3.0 database not found"):
        create("scorer", "srm", branches=["entity-background"],
               branch_config={"entity-background": {"wordnet_root": str(tmp_path / "none")}})


@pytest.mark.skipif(not wordnet_available(), reason="Debian's wordnet-base is not installed (make data)")
def test_entity_branch_on_the_real_wordnet() -> None:
    (branch,) = sb.make_branches(["entity-background"])
    right, wrong = branch.compute([("Is a dog a mammal?", "Yes, a dog is a mammal."),
                                   ("Is a dog a mammal?", "No, a dog is a bird.")])
    assert right.features[2:] == (1.0, 0.0) and wrong.features[2:] == (0.0, 1.0)
    assert "dog: a member of the genus Canis" in right.text
