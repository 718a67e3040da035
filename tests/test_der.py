"""``der`` and the shared herding memory: herding on a constructed example, frozen extractors stay bit-identical,
state round-trips through torch.save / weights_only loading, the classifier stage is plain cross-entropy
training, the ``model`` vocabulary shared with ``alade-snn``, bad input is named."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from lifelong.benchmarks.split_digits import SplitDigitsConfig, split_digits
from lifelong.incremental.learner import RunContext, StrategyConfig, make_optimizer
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.errors import UserError
from lifelong.strategies._herding import ExemplarMemory, balanced_indices, herding_select
from lifelong.strategies._samples import materialise
from lifelong.strategies.alade_snn import AladeSNNConfig
from lifelong.strategies.der import DERConfig, DERLearner, lr_at

TINY = {"epochs": 1, "finetune_epochs": 2, "batch_size": 64, "width_mult": 0.5, "mem_size": 40}


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def stream():
    return split_digits(SplitDigitsConfig(n_experiences=5, seed=0))


def _learner(stream, **overrides) -> DERLearner:
    cfg = build_config(DERConfig, {**TINY, **overrides})
    torch.manual_seed(0)
    return DERLearner(cfg, RunContext(stream=stream, device=torch.device("cpu"), seed=0))


@pytest.fixture(scope="module")
def trained(stream):
    """A learner after two experiences, and its first extractor's state after the first one."""
    learner = _learner(stream)
    learner.train_experience(stream.train_stream[0])
    snapshot = {k: v.clone() for k, v in learner.model.extractors[0].state_dict().items()}
    learner.train_experience(stream.train_stream[1])
    return learner, snapshot


def test_herding_picks_the_expected_exemplars() -> None:
    # unit vectors e1, e2, m = (e1 + e2)/sqrt(2), d = (0.96, 0.28); class mean mu = (0.667, 0.497).
    # 1st: closest to mu is m (0.214 vs d 0.365); 2nd: (m + d)/2 is 0.167 from mu, (m + e1)/2 0.235;
    # 3rd: (m + d + e2)/3 is 0.199 from mu, (m + d + e1)/3 0.278; then e1.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)], [0.96, 0.28]])
    assert herding_select(f, 4) == [2, 3, 1, 0]
    # features are L2-normalised first: scaling samples changes nothing; m never exceeds the class size
    assert herding_select(f * torch.tensor([[3.0], [0.5], [2.0], [7.0]]), 10) == [2, 3, 1, 0]
    assert herding_select(f, 0) == []


def test_memory_keeps_herding_order_and_the_budget() -> None:
    mem = ExemplarMemory(total_size=6)
    x1 = torch.arange(10.0).reshape(10, 1)
    y1 = torch.tensor([0] * 5 + [1] * 5)
    mem.update(x1, y1, lambda xb: torch.cat([torch.ones_like(xb), xb], 1))
    assert len(mem) == 6 and mem.classes() == [0, 1]
    first_class0 = mem.x[mem.y == 0].flatten().tolist()
    x2 = torch.arange(100.0, 104.0).reshape(4, 1)
    mem.update(x2, torch.tensor([2, 2, 3, 3]), lambda xb: torch.cat([torch.ones_like(xb), xb], 1))
    assert len(mem) == 4 and mem.classes() == [0, 1, 2, 3]  # 6 // 4 = 1 per class
    assert mem.x[mem.y == 0].flatten().tolist() == first_class0[:1]  # iCaRL reduction keeps the first
    y = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    idx = balanced_indices(y, torch.Generator().manual_seed(0))
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]


def test_lr_schedule() -> None:
    assert lr_at(0, 0.1, [2, 4], 0.1) == 0.1
    assert lr_at(3, 0.1, [2, 4], 0.1) == pytest.approx(0.01)
    assert lr_at(0, 0.1, [], 0.1, warmup=4) == pytest.approx(0.025)


def test_old_extractors_are_bit_identical_after_a_later_task(stream, trained) -> None:
    learner, before = trained
    after = learner.model.extractors[0].state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    assert not any(p.requires_grad for p in learner.model.extractors[0].parameters())
    assert learner.model.n_tasks == 2 and learner.model.classifier.out_features == 4
    # the newest extractor started as a copy of the old one and did train
    assert not torch.equal(learner.model.extractors[1].state_dict()["stem_conv.weight"], before["stem_conv.weight"])
    # predictions cover every class of the stream, unseen ones can never win
    x = torch.stack([stream.test_stream[0].dataset[i][0] for i in range(8)])
    logits = learner.predict(x)
    assert logits.shape == (8, 10) and (logits.argmax(1) < 4).all()
    assert len(learner.memory) == 40 and learner.memory.classes() == list(range(4))
    s = learner.summary()
    assert s["n_extractors"] == 2 and s["ops"]["macs_per_sample"] > 0 and s["ops"]["sops_per_sample"] == 0


def test_state_round_trips_through_weights_only_loading(stream, trained) -> None:
    learner, _ = trained
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = _learner(stream)
    fresh.load_state_dict(state)
    x = torch.stack([stream.test_stream[1].dataset[i][0] for i in range(16)])
    assert torch.equal(fresh.predict(x), learner.predict(x))
    assert torch.equal(fresh.memory.x, learner.memory.x)
    fresh.train_experience(stream.train_stream[2])  # and it goes on training
    assert fresh.model.n_tasks == 3 and torch.equal(fresh.model.extractors[0].state_dict()["stem_conv.weight"],
                                                    learner.model.extractors[0].state_dict()["stem_conv.weight"])


def test_bad_input_is_named(stream) -> None:
    with pytest.raises(UserError, match="model"):
        _learner(stream, model="vgg")
    learner = _learner(stream)
    with pytest.raises(UserError, match="class-incremental"):
        learner.train_experience(stream.train_stream[1])  # classes 2, 3 before 0, 1
    with pytest.raises(ConfigError, match="mem_size"):
        build_config(DERConfig, {"mem_size": -1})


def _reference_finetune(learner: DERLearner, x_cur, y_cur, known: int, gen: torch.Generator) -> None:
    """DER's classifier stage written out: the classifier alone, SGD (momentum 0.9), step schedule, plain
    cross-entropy of its own logits over a class-balanced subset of current data + memory."""
    cfg = learner.config
    x_all, y_all = torch.cat([x_cur, learner.memory.x]), torch.cat([y_cur, learner.memory.y])
    idx = balanced_indices(y_all, generator=gen)
    feats, targets = learner._frozen_features(x_all[idx]), y_all[idx]
    clf = learner.model.classifier
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.finetune_weight_decay)
    for epoch in range(cfg.finetune_epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.finetune_lr * 0.1 ** sum(1 for m in cfg.finetune_milestones if epoch >= m)
        perm = torch.randperm(len(targets), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            sel = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(clf(feats[sel]) / cfg.finetune_temperature, targets[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def test_finetuning_trains_the_classifier_on_its_own_logits(stream, trained) -> None:
    """DER's classifier stage adds nothing to the logits: it gives bit-identical weights and logits to plain
    cross-entropy training written out by hand, and its log has the gap per epoch and nothing else per epoch."""
    learner, _ = trained
    clf = learner.model.classifier
    saved = copy.deepcopy(clf.state_dict())
    data = stream.train_stream[1].dataset
    x_cur, y_cur = materialise(data.eval() if hasattr(data, "eval") else data)
    probe = learner._frozen_features(x_cur[:32])
    try:
        log = learner._finetune_classifier(x_cur, y_cur, 2, torch.Generator().manual_seed(7))
        ours = clf(probe).detach().clone()
        clf.load_state_dict(saved)
        clf.requires_grad_(True)
        _reference_finetune(learner, x_cur, y_cur, 2, torch.Generator().manual_seed(7))
        reference = clf(probe).detach().clone()
    finally:
        clf.load_state_dict(saved)
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, clf(probe).detach())  # and the stage did train
    assert set(log) == {"samples", "per_class", "gap"} and len(log["gap"]) == learner.config.finetune_epochs


def test_optimizer_factory_takes_only_trainable_parameters() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[0].requires_grad_(False)
    sgd = make_optimizer(net.parameters(), StrategyConfig(lr=0.5, momentum=0.8, weight_decay=0.1))
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups[0]["params"]) == 2
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.5, 0.8, 0.1)
    adam = make_optimizer(net.parameters(), StrategyConfig(optimizer="adam", lr=0.01))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 0.01


def test_model_names_the_same_architectures_for_der_and_alade_snn() -> None:
    # der: the ReLU ResNets or a platform backbone; alade-snn: the spiking version of the same ResNets
    for name in ("auto", "resnet-tiny", "resnet-mnist", "resnet-cifar", "mlp", "cnn-small"):
        assert build_config(DERConfig, {"model": name}).model == name
    for name in ("auto", "resnet-tiny", "resnet-mnist", "resnet-cifar", "tcn-audio"):
        assert build_config(AladeSNNConfig, {"model": name}).model == name
    # the old spiking layout names are refused with the allowed values and the new name
    with pytest.raises(ConfigError, match=r"model: 'tiny' is not allowed; allowed values: auto, resnet-tiny, "
                                          r"resnet-mnist, resnet-cifar, tcn-audio, taaf, av-concat, av-sum "
                                          r"\('tiny' is now 'resnet-tiny'\)"):
        build_config(AladeSNNConfig, {"model": "tiny"})
    with pytest.raises(ConfigError, match="'cifar' is now 'resnet-cifar'"):
        build_config(AladeSNNConfig, {"model": "cifar"})
    with pytest.raises(ConfigError, match="allowed values: auto, resnet-tiny, resnet-mnist, resnet-cifar, tcn-audio, "
                                          "taaf, av-concat, av-sum$"):
        build_config(AladeSNNConfig, {"model": "mlp"})  # no spiking version
    with pytest.raises(ConfigError,
                       match="allowed values: auto, resnet-tiny, resnet-mnist, resnet-cifar, tcn-audio, taaf, av-concat, "
                             "av-sum, mlp, cnn-small"):
        build_config(DERConfig, {"model": "vgg"})


def test_auto_extractor_by_input_size_and_the_28x28_resnet() -> None:
    from lifelong.adapters.nets.expandable import extractor_factory, resolve_architecture
    from lifelong.adapters.nets.spiking import NeuronConfig

    assert [resolve_architecture("auto", (1, s, s)) for s in (8, 28, 32)] == [
        "resnet-tiny", "resnet-mnist", "resnet-cifar"]
    make, width = extractor_factory("resnet-mnist", (1, 28, 28))
    assert width == 64 and make()(torch.zeros(2, 1, 28, 28)).shape == (1, 2, 64)  # ReLU twin: T = 1
    make, width = extractor_factory("resnet-mnist", (1, 28, 28), neuron=NeuronConfig(), T=3)
    assert width == 64 and make()(torch.zeros(2, 1, 28, 28)).shape == (3, 2, 64)  # spiking: T steps
