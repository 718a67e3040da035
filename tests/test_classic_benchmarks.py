"""The classic streams (split-mnist, split-cifar10, split-cifar100, split-tinyimagenet) on small files in the
real on-disk formats, read by the real torchvision / Avalanche loaders (no network, download=False).

The synthetic CIFAR pickles cannot match torchvision's official md5 sums, so they are read with
``verify_checksums=false``; one test checks that the default (verified) path rejects them with a clear error.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.platform import registry
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ file writers


def _cifar_images(rng: np.random.Generator, labels: list[int]) -> np.ndarray:
    """Rows of 3072 uint8 (R plane, G plane, B plane), as in the CIFAR python pickles; every image of class c
    has mean brightness about 8*c so a model can tell the classes apart."""
    n = len(labels)
    base = np.array(labels, dtype=np.int64)[:, None] * 8
    noise = rng.integers(0, 40, size=(n, 3072))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_class_batch: int = 2, per_class_test: int = 3, seed: int = 0) -> Path:
    """``cifar-10-batches-py``: five training batches, a test batch and batches.meta (python 2 style pickles)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        k = per_class_test if name == "test_batch" else per_class_batch
        labels = [c for c in range(10) for _ in range(k)]
        rng.shuffle(labels)
        entry = {"batch_label": name.encode(), "labels": labels, "data": _cifar_images(rng, labels),
                 "filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": 20,
                                                        "num_vis": 3072}, protocol=2))
    return folder


def write_cifar100(root: Path, per_class_train: int = 3, per_class_test: int = 1, seed: int = 1) -> Path:
    """``cifar-100-python``: train, test and meta with fine and coarse labels (100 classes, 400 images)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, k in (("train", per_class_train), ("test", per_class_test)):
        fine = [c for c in range(100) for _ in range(k)]
        rng.shuffle(fine)
        entry = {"filenames": [f"x{i}.png" for i in range(len(fine))], "batch_label": name,
                 "fine_labels": fine, "coarse_labels": [c // 5 for c in fine],
                 "data": _cifar_images(rng, [c % 32 for c in fine])}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine_names,
                                                "coarse_label_names": [f"coarse_{i}" for i in range(20)]},
                                               protocol=2))
    return folder


def _idx(array: np.ndarray) -> bytes:
    """The idx binary format: 0x00 0x00, type 0x08 (ubyte), ndim, then big-endian int32 dims, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, per_class_train: int = 4, per_class_test: int = 2, seed: int = 2) -> Path:
    """``MNIST/raw``: the four uncompressed idx files torchvision reads."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, k in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.array([c for c in range(10) for _ in range(k)], dtype=np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
    return raw


def write_tinyimagenet(root: Path, seed: int = 3) -> Path:
    """``tiny-imagenet-200``: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt.

    Avalanche's TinyImagenet reads exactly 200 classes; one 64x64 JPEG per class for train and one for val.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{1440000 + i:08d}" for i in range(200)]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    annotations = []
    for i, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        pixels = rng.integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{wnid}_0.JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        Image.fromarray(pixels[::-1]).save(folder / "val" / "images" / f"val_{i}.JPEG")
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    return folder


def build(name: str, **config: object):
    return registry.create("benchmark", name, **config)


def first_x(dataset) -> torch.Tensor:
    return dataset[0][0]


# ------------------------------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root)
    return root


def test_split_cifar10_shapes_counts_and_names(cifar10_root: Path) -> None:
    stream = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False, seed=4)
    assert stream.n_experiences == 5 and stream.n_classes == 10
    assert stream.input_shape == (3, 32, 32)
    assert sorted(stream.class_order) == list(range(10)) and stream.class_order != list(range(10))
    assert stream.names_in_order()[0] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                          "horse", "ship", "truck"][stream.class_order[0]]
    for i in range(5):
        train = stream.train_stream[i].dataset
        test = stream.test_stream[i].dataset.eval()
        assert len(train) == 2 * 5 * 2 and len(test) == 2 * 3  # 2 classes, 5 batches x 2 images; 3 test each
        assert sorted(set(int(t) for t in train.targets)) == [2 * i, 2 * i + 1]
        x, y = test[0][:2]
        assert tuple(x.shape) == (3, 32, 32) and x.dtype == torch.float32
    assert stream.info["n_train"] == 100 and stream.info["n_test"] == 30


def test_cifar10_relabels_in_class_order(cifar10_root: Path) -> None:
    """The loader's original label of each sample maps to its position in class_order."""
    from torchvision.datasets import CIFAR10

    order = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    stream = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False, class_order=order,
                   augment=False, n_experiences=2)
    assert stream.class_order == order and stream.classes_per_experience == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # brightness encodes the original class (8 * c + noise in [0, 40)), so the relabelled id can be checked
    test = stream.test_stream[0].dataset.eval()
    for k in range(len(test)):
        x, y = test[k][:2]
        pixel_mean = float((x * torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
                            + torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)).mean()) * 255
        original = order[int(y)]
        assert abs(pixel_mean - (8 * original + 19.5)) < 6, (k, int(y), original, pixel_mean)
    assert CIFAR10.base_folder == "cifar-10-batches-py"


def test_train_transform_augments_and_eval_transform_does_not(cifar10_root: Path) -> None:
    stream = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False)
    train = stream.train_stream[0].dataset.train()
    evald = stream.train_stream[0].dataset.eval()
    torch.manual_seed(0)
    draws = [first_x(train) for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:]), "train transform should be random (crop/flip)"
    assert all(torch.equal(first_x(evald), first_x(evald)) for _ in range(3))
    # the test stream is evaluated through .eval(); there too the result is deterministic
    test = stream.test_stream[0].dataset.eval()
    assert torch.equal(first_x(test), first_x(test))
    plain = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False, augment=False)
    a = plain.train_stream[0].dataset.train()
    assert torch.equal(first_x(a), first_x(a)) and torch.equal(first_x(a), first_x(evald))


@pytest.mark.parametrize("task_labels", [True, False])
def test_test_experiences_start_in_eval_mode(cifar10_root: Path, task_labels: bool) -> None:
    """As in Avalanche's own builders: test data are un-augmented even without ``.eval()``; training data
    are augmented until ``.eval()`` is asked for."""
    stream = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False, task_labels=task_labels)
    test, train = stream.test_stream[1].dataset, stream.train_stream[1].dataset
    torch.manual_seed(1)
    assert all(torch.equal(first_x(test), first_x(test)) for _ in range(6))
    assert any(not torch.equal(first_x(train), first_x(train)) for _ in range(6))
    assert any(not torch.equal(first_x(test.train()), first_x(test.train())) for _ in range(6))
    assert torch.equal(first_x(train.eval()), first_x(train.eval()))


def test_verified_cifar_rejects_files_that_are_not_the_official_release(cifar10_root: Path) -> None:
    with pytest.raises(UserError) as info:
        build("split-cifar10", data_root=str(cifar10_root))
    message = str(info.value)
    assert "data_batch_1" in message and "md5" in message and "verify_checksums=false" in message
    assert "\n" not in message


def test_split_cifar100_hundred_classes(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    stream = build("split-cifar100", data_root=str(tmp_path), verify_checksums=False, seed=1)
    assert stream.n_experiences == 10 and stream.n_classes == 100 and stream.input_shape == (3, 32, 32)
    assert stream.class_names[:2] == ["fine_00", "fine_01"]
    for i in range(10):
        train, test = stream.train_stream[i].dataset, stream.test_stream[i].dataset
        assert len(train) == 30 and len(test) == 10
        assert sorted(set(int(t) for t in train.targets)) == list(range(10 * i, 10 * i + 10))
    x = stream.train_stream[9].dataset.eval()[0][0]
    assert tuple(x.shape) == (3, 32, 32)
    b50 = build("split-cifar100", data_root=str(tmp_path), verify_checksums=False, initial_classes=50,
                n_experiences=6)
    assert [len(c) for c in b50.classes_per_experience] == [50, 10, 10, 10, 10, 10]
    with pytest.raises(ConfigError, match="do not divide"):
        build("split-cifar100", data_root=str(tmp_path), verify_checksums=False, n_experiences=7)
    uneven = build("split-cifar100", data_root=str(tmp_path), verify_checksums=False, n_experiences=7,
                   uneven="last")
    assert [len(c) for c in uneven.classes_per_experience] == [14] * 6 + [16]


# ------------------------------------------------------------------------------------------ MNIST, Tiny


def test_split_mnist_from_idx_files(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    stream = build("split-mnist", data_root=str(tmp_path), shuffle_classes=False, task_labels=False)
    assert stream.n_experiences == 5 and stream.input_shape == (1, 28, 28)
    assert stream.class_order == list(range(10)) and stream.class_names[3] == "3 - three"
    for i in range(5):
        train, test = stream.train_stream[i].dataset, stream.test_stream[i].dataset.eval()
        assert len(train) == 8 and len(test) == 4
        x, y = test[0][:2]
        assert tuple(x.shape) == (1, 28, 28) and int(y) in (2 * i, 2 * i + 1)
    # normalised as Avalanche's SplitMNIST: (x - 0.1307) / 0.3081 on [0, 1] pixels
    raw = np.frombuffer((tmp_path / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8)
    x0 = stream.test_stream[0].dataset.eval()[0][0]
    first = torch.tensor(raw[:784].reshape(1, 28, 28), dtype=torch.float32) / 255
    assert torch.allclose(x0, (first - 0.1307) / 0.3081, atol=1e-5)


def test_split_tinyimagenet_from_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tinyimagenet(tmp_path)
    stream = build("split-tinyimagenet", data_root=str(tmp_path), seed=2)
    assert "Files already downloaded" not in capsys.readouterr().out  # Avalanche's print kept off stdout
    assert stream.n_experiences == 10 and stream.n_classes == 200 and stream.input_shape == (3, 64, 64)
    assert stream.class_names[0] == "thing 0" and stream.info["wnids"][0] == "n01440000"
    for i in (0, 9):
        train, test = stream.train_stream[i].dataset, stream.test_stream[i].dataset.eval()
        assert len(train) == 20 and len(test) == 20
        assert sorted(set(int(t) for t in test.targets)) == list(range(20 * i, 20 * i + 20))
        x = test[0][0]
        assert tuple(x.shape) == (3, 64, 64)
    tr = stream.train_stream[0].dataset.train()
    torch.manual_seed(0)
    assert any(not torch.equal(first_x(tr), first_x(tr)) for _ in range(6))


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name, folder", [("split-mnist", "MNIST/raw"), ("split-cifar10", "cifar-10-batches-py"),
                                          ("split-cifar100", "cifar-100-python"),
                                          ("split-tinyimagenet", "tiny-imagenet-200")])
def test_missing_data_is_one_clear_config_error(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(ConfigError, match="needs data_root") as info:
        build(name)
    assert "download=true" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build(name, data_root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / folder) in message and "download=true" in message and "\n" not in message


def test_broken_tinyimagenet_folder_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "train").mkdir()
    (folder / "wnids.txt").write_text("".join(f"n{i:08d}\n" for i in range(200)))
    (folder / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(UserError) as info:
        build("split-tinyimagenet", data_root=str(tmp_path))
    message = str(info.value)
    assert str(folder / "train" / "n00000000" / "images") + " is missing" in message and "\n" not in message


def test_truncated_cifar_pickle_is_one_clear_error(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(UserError) as info:
        build("split-cifar10", data_root=str(tmp_path), verify_checksums=False)
    assert "cannot load CIFAR-10 from" in str(info.value) and "\n" not in str(info.value)


def test_data_root_pointing_inside_the_dataset_folder_is_explained(cifar10_root: Path) -> None:
    with pytest.raises(ConfigError, match="give the folder that holds cifar-10-batches-py/ as data_root"):
        build("split-cifar10", data_root=str(cifar10_root / "cifar-10-batches-py"), verify_checksums=False)


def test_cli_missing_data_root_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO / ".venv/bin/lifelong"), "run", "--strategy", "naive", "--benchmark", "split-cifar10",
         "--set", "data_root=/nonexistent", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "/nonexistent" in lines[0] and "cifar-10-batches-py" in lines[0] and "download=true" in lines[0]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- end to end


def test_naive_runs_end_to_end_on_cifar10_files(cifar10_root: Path, tmp_path: Path) -> None:
    from lifelong.incremental.run import resolve_config, run_experiment

    config = resolve_config(strategy="naive", benchmark="split-cifar10", seed=0, device="cpu",
                            overrides={"data_root": str(cifar10_root), "verify_checksums": False, "epochs": 1,
                                       "n_experiences": 2, "model": "cnn-small"})
    results = run_experiment(config, out=tmp_path / "run", progress=False)
    matrix = np.array(results["accuracy_matrix"])
    assert matrix.shape == (2, 2) and np.all((matrix >= 0) & (matrix <= 1))
    assert results["test_sizes"] == [15, 15] and results["benchmark"] == "split-cifar10"
    assert results["config"]["benchmark_config"]["data_root"] == str(cifar10_root)
    assert (tmp_path / "run" / "results.json").is_file()


def test_classic_benchmarks_are_listed() -> None:
    names = {s.name for s in registry.list_plugins("benchmark")}
    assert {"split-mnist", "split-cifar10", "split-cifar100", "split-tinyimagenet"} <= names


def test_streams_declare_their_normalisation_for_pretrained_backbones(cifar10_root):
    from lifelong.adapters.nets.transforms import stream_normalization

    stream = build("split-cifar10", data_root=str(cifar10_root), verify_checksums=False)
    mean, std = stream_normalization(stream.info)
    assert list(mean) == pytest.approx([0.4914, 0.4822, 0.4465]) and list(std) == pytest.approx([0.2023, 0.1994, 0.2010])
