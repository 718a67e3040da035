"""Side branches of the structural reward model (SRM): one feature generator per dimension, cached, parallel.

- ``base``: the ``Branch`` interface and ``BranchOutput``, the on-disk ``BranchCache``, ``run_branches`` (only
  uncached pairs are computed; branches run in parallel threads) and the text helpers;
- ``text``: ``semantic``, ``style``, ``fact-check`` (sentence encoder and rules);
- ``llm``: ``fluency``, ``quality`` (the local causal LM);
- ``entity``: ``entity-background`` (WordNet background on the prompt's entities; ``entity_background``);
- ``factory``: ``make_branches`` (registered names to branch objects, through the registry's kind ``branch``),
  ``BRANCH_NAMES`` (the built-in five) and ``branch_names()`` (every registered branch);
- ``sbm``: the generative side branches ``sbm-*`` (the LM with a LoRA adapter per dimension), and ``sbm_train``
  their training pipeline (``lifelong reward sbm-train``).

The registry imports every public module of this package itself (``BUILTIN_PACKAGES``), so each built-in branch is
registered whether or not a scorer has been imported. The shared models (sentence encoder, LM) live in
``lifelong.adapters.lm.model_pool``. Code outside the scorers (bench scripts, other packages' branches) imports
the names below from ``lifelong.scorers.branches``; docs/reward.md describes each branch.
"""

from lifelong.scorers.branches.base import (
    CACHE_FILE,
    Branch,
    BranchCache,
    BranchOutput,
    BranchSettings,
    Item,
    default_cache_path,
    run_branches,
    sentences,
    states,
    words,
)
from lifelong.scorers.branches.entity import EntityBackgroundBranch, EntityConfig, entity_background, find_entities
from lifelong.scorers.branches.factory import (
    BRANCH_NAMES,
    BRANCH_TYPES,
    branch_names,
    branch_spec,
    build_branch_config,
    make_branches,
)
from lifelong.scorers.branches.llm import FluencyBranch, LLMBranch, LLMConfig, QualityBranch, QualityConfig
from lifelong.scorers.branches.text import (
    FactCheckBranch,
    FactCheckConfig,
    SemanticBranch,
    SemanticConfig,
    StyleBranch,
    StyleConfig,
    fact_file,
)

__all__ = [
    "BRANCH_NAMES", "BRANCH_TYPES", "CACHE_FILE", "Branch", "BranchCache", "BranchOutput", "BranchSettings",
    "EntityBackgroundBranch", "EntityConfig", "entity_background", "find_entities",
    "FactCheckBranch", "FactCheckConfig", "FluencyBranch", "Item", "LLMBranch", "LLMConfig", "QualityBranch",
    "QualityConfig", "SemanticBranch", "SemanticConfig", "StyleBranch", "StyleConfig", "branch_names", "branch_spec",
    "build_branch_config", "default_cache_path", "fact_file", "make_branches", "run_branches", "sentences", "states",
    "words",
]
