"""split-fashion-mnist: the IDX reader on small files written in the real format (gzipped and raw), the folder
layouts, every check with its one-line error, the CLI's bad-input contract, the 28x28 backbones, the configs,
and (when Debian's dataset-fashion-mnist is installed) the real files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.benchmarks import fashion_mnist as fm
from lifelong.benchmarks._idx import IdxError, read_idx
from lifelong.platform import registry
from lifelong.platform.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
FASHION_STRATEGIES = ("naive", "joint", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er", "der", "alade-snn")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, *, gz: bool = True, train: int = 4, test: int = 2, seed: int = 0) -> Path:
    """The four Fashion-MNIST files with ``train``/``test`` random 28x28 images per class."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, k in (("train", train), ("t10k", test)):
        labels = np.array([c for _ in range(k) for c in range(10)], dtype=np.uint8)  # interleaved, as the real files
        images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def build(**config: object):
    return registry.create("benchmark", "split-fashion-mnist", **{"verify_checksums": False, **config})


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion(tmp_path_factory.mktemp("fashion"))


# ------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("gz", [True, False])
def test_stream_from_idx_files_gzipped_or_raw(tmp_path: Path, gz: bool) -> None:
    write_fashion(tmp_path, gz=gz)
    stream = build(data_root=str(tmp_path), shuffle_classes=False, task_labels=False)
    assert stream.n_experiences == 5 and stream.input_shape == (1, 28, 28) and stream.n_classes == 10
    assert stream.class_order == list(range(10)) and stream.names_in_order()[9] == "Ankle boot"
    for i in range(5):
        train, test = stream.train_stream[i].dataset, stream.test_stream[i].dataset.eval()
        assert len(train) == 8 and len(test) == 4
        assert sorted({int(t) for t in test.targets}) == [2 * i, 2 * i + 1]
    # the first test image of class 0, normalised with Fashion-MNIST's mean and std
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    raw = (tmp_path / name).read_bytes()
    pixels = np.frombuffer(gzip.decompress(raw) if gz else raw, dtype=np.uint8, offset=16)[:784]
    expected = (torch.tensor(pixels.reshape(1, 28, 28), dtype=torch.float32) / 255 - 0.2860) / 0.3530
    assert torch.allclose(stream.test_stream[0].dataset.eval()[0][0], expected, atol=1e-5)


def test_gzip_is_read_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.rename(tmp_path / "t10k-labels-idx1-ubyte.gz")  # raw bytes under a .gz name still load
    labels, _ = read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert labels.tolist()[:10] == list(range(10))


def test_torchvision_layout_and_relabelling(tmp_path: Path) -> None:
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    stream = build(data_root=str(tmp_path), class_order=order, n_experiences=2)
    assert stream.class_order == order and stream.classes_per_experience == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert stream.info["files"]["train_images"].endswith("FashionMNIST/raw/train-images-idx3-ubyte.gz")
    # relabelled 0 is the original class 9: its first image is the file's first image of label 9
    test0 = stream.test_stream[0].dataset.eval()
    x0 = next(test0[i][0] for i in range(len(test0)) if int(test0[i][1]) == 0)
    raw = np.frombuffer(gzip.decompress((tmp_path / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz").read_bytes()),
                        dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    assert torch.allclose(x0, (torch.tensor(raw[9], dtype=torch.float32)[None] / 255 - 0.2860) / 0.3530, atol=1e-5)


def test_per_class_subsets_are_fixed_by_the_seed(tmp_path: Path) -> None:
    write_fashion(tmp_path, train=6, test=3)
    a = build(data_root=str(tmp_path), train_per_class=2, test_per_class=1, seed=1, shuffle_classes=False)
    b = build(data_root=str(tmp_path), train_per_class=2, test_per_class=1, seed=1, shuffle_classes=False)
    c = build(data_root=str(tmp_path), train_per_class=2, test_per_class=1, seed=2, shuffle_classes=False)
    assert a.info["n_train"] == 20 and a.info["n_test"] == 10
    xa = torch.stack([a.train_stream[0].dataset[i][0] for i in range(4)])
    xb = torch.stack([b.train_stream[0].dataset[i][0] for i in range(4)])
    xc = torch.stack([c.train_stream[0].dataset[i][0] for i in range(4)])
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert a.class_order == list(range(10))
    assert build(data_root=str(tmp_path), seed=3).class_order == build(data_root=str(tmp_path), seed=3).class_order


# ------------------------------------------------------------------------------------------- bad input


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, message
    return message


def test_missing_data_names_the_package_make_data_and_the_option(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "not-installed")
    with pytest.raises(ConfigError) as info:
        build()
    message = one_line(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "make data" in message
    assert "data_root" in message and str(tmp_path / "not-installed") in message
    with pytest.raises(ConfigError, match="is not a folder"):
        build(data_root=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as info:
        build(data_root=str(tmp_path / "empty"))
    message = one_line(info.value)
    assert "no Fashion-MNIST files in" in message and "FashionMNIST/raw" in message and "train-images-idx3-ubyte" in message


def test_the_debian_folder_is_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", write_fashion(tmp_path / "debian"))
    stream = build(n_experiences=2)
    assert stream.info["files"]["test_labels"] == str(tmp_path / "debian" / "t10k-labels-idx1-ubyte.gz")


def test_partial_folder_names_the_missing_files(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as info:
        build(data_root=str(tmp_path))
    assert "holds only 3 of the 4" in one_line(info.value) and "t10k-images-idx3-ubyte[.gz]" in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_files_are_refused(tmp_path: Path, gz: bool) -> None:
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()[:-100]
    path.unlink()
    (tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).write_bytes(
        gzip.compress(data)[:-30] if gz else data)  # a cut gzip stream, or cut raw data
    with pytest.raises(IdxError) as info:
        build(data_root=str(tmp_path))
    assert "truncated" in one_line(info.value) and "train-images-idx3-ubyte" in str(info.value)


def test_files_of_another_kind_or_data_set_are_refused(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(pickle.dumps({"data": [1, 2, 3], "labels": [0]}))  # a CIFAR-like pickle
    with pytest.raises(IdxError, match="not an IDX file.*pickle"):
        build(data_root=str(tmp_path))
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())  # labels where images belong
    with pytest.raises(IdxError, match="an IDX image file was expected.*label file"):
        build(data_root=str(tmp_path))
    images.write_bytes(idx_bytes(np.zeros((40, 32, 32), dtype=np.uint8)))  # another image size
    with pytest.raises(IdxError, match="32x32 pixels, expected 28x28"):
        build(data_root=str(tmp_path))
    images.write_bytes(idx_bytes(np.zeros((39, 28, 28), dtype=np.uint8)))  # one image short of the labels
    with pytest.raises(IdxError, match="holds 39 images but .* holds 40 labels"):
        build(data_root=str(tmp_path))
    images.write_bytes(good)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.array([c % 12 for c in range(20)], dtype=np.uint8)))
    with pytest.raises(IdxError, match="label 11 is outside Fashion-MNIST's classes 0..9"):
        build(data_root=str(tmp_path))


def test_verified_files_must_be_the_official_release(fashion_root: Path) -> None:
    with pytest.raises(IdxError) as info:
        build(data_root=str(fashion_root), verify_checksums=True)
    assert "not the official Fashion-MNIST" in one_line(info.value) and "verify_checksums=false" in str(info.value)


def test_class_order_with_unknown_classes_is_refused(fashion_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"class_order must be a permutation of the 10 classes.*unknown \[12\]"):
        build(data_root=str(fashion_root), class_order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 12])
    with pytest.raises(ConfigError, match="do not divide"):
        build(data_root=str(fashion_root), n_experiences=3)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", ["missing", "partial", "foreign", "class_order"])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path: Path, case: str) -> None:
    data = tmp_path / "data"
    args = ["--set", f"data_root={data}"]
    if case != "missing":
        write_fashion(data)
    if case == "partial":
        (data / "train-labels-idx1-ubyte.gz").unlink()
    if case == "foreign":
        (data / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(pickle.dumps(np.zeros((3, 32, 32, 3)))))
    if case == "class_order":
        args += ["--set", "class_order=[0,1,2,3,4,5,6,7,8,10]", "--set", "verify_checksums=false"]
    before = _tree(tmp_path)
    result = cli("run", "--strategy", "naive", "--benchmark", "split-fashion-mnist", *args,
                 "--out", str(tmp_path / "run"), "--set", "loggers=[csv,tensorboard]")
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = {"missing": "is not a folder", "partial": "holds only 3 of the 4", "foreign": "not an IDX file",
                "class_order": "unknown [10]"}[case]
    assert expected in lines[0]
    assert _tree(tmp_path) == before and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- backbones, configs


def test_auto_backbone_for_28x28_and_the_spiking_layout() -> None:
    from lifelong.adapters.nets.backbones import build_backbone, default_backbone
    from lifelong.adapters.nets.spiking import SpikingResNet

    assert default_backbone((1, 28, 28)) == "cnn-28" and default_backbone((1, 8, 8)) == "mlp"
    assert default_backbone((3, 32, 32)) == "resnet-reduced"
    net = build_backbone("auto", (1, 28, 28), 10)
    assert tuple(net(torch.zeros(3, 1, 28, 28)).shape) == (3, 10) and net.feature_dim == 64
    for spiking, T in ((True, 4), (False, 1)):  # the spiking ResNet and its ANN twin, sized for 28x28
        snn = SpikingResNet(1, layout="mnist", T=4, spiking=spiking)
        feats = snn(torch.zeros(2, 1, 28, 28))
        assert tuple(feats.shape) == (T, 2, 64)
        assert snn.stem_conv.stride == (2, 2)


def test_every_fashion_config_resolves(fashion_root: Path) -> None:
    from lifelong.incremental.run import resolve_config

    found = sorted(p.parent.name for p in (REPO / "configs").glob("*/split-fashion-mnist.yaml"))
    assert found == sorted(FASHION_STRATEGIES)
    for strategy in FASHION_STRATEGIES:
        config = resolve_config(config_file=REPO / "configs" / strategy / "split-fashion-mnist.yaml",
                                overrides={"data_root": str(fashion_root), "verify_checksums": False})
        assert config.strategy == strategy and config.benchmark == "split-fashion-mnist"
        assert config.benchmark_config.n_experiences == 5 and not config.benchmark_config.class_order


# ------------------------------------------------------------------------------------------- the real files


@pytest.mark.skipif(not all((fm.DEBIAN_DIR / f"{n}.gz").is_file() for n in fm.FILES.values()),
                    reason=f"Debian's dataset-fashion-mnist is not installed (no files in {fm.DEBIAN_DIR}; `make data`)")
def test_the_real_files_from_the_debian_package() -> None:
    stream = registry.create("benchmark", "split-fashion-mnist", seed=0)  # checksums verified
    assert stream.info["n_train"] == 60000 and stream.info["n_test"] == 10000
    for i in range(5):
        assert len(stream.train_stream[i].dataset) == 12000 and len(stream.test_stream[i].dataset) == 2000
    x = torch.stack([stream.train_stream[0].dataset[i][0] for i in range(0, 12000, 97)])
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # roughly standardised
