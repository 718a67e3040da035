"""``split-fashion-mnist``: Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; 60,000 + 10,000 grey 28x28 images of
10 kinds of clothing) as a class-incremental stream, read from its four original IDX files.

Where the files come from: ``data_root``, a folder that holds the four files (gzipped or not) or torchvision's
layout (``data_root/FashionMNIST/raw/``); without ``data_root``, the folder of Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``, ``make data`` installs it). Nothing is downloaded.

What is checked, before anything is written (``validate``: the four files exist, their IDX headers say images of
28x28 and labels, with as many labels as images) and when the stream is built (the files are as long as their
headers say, the labels are 0..9, every class has training images, and with ``verify_checksums`` the
uncompressed bytes are those of the official release, so MNIST's files, which have the same format and sizes,
are refused). Each failure is one line naming the file and the problem.

The protocol follows ``split-digits``: the official train/test split, the class order fixed by the seed (or
given), ``n_experiences`` / ``initial_classes`` / ``uneven`` split arithmetic from ``incremental/streams.py``, labels
relabelled in class order. Images are float tensors in [0, 1], normalised with Fashion-MNIST's training-set
mean and std (0.2860, 0.3530) unless ``normalize: false``; no augmentation. ``train_per_class`` (and
``test_per_class``) keep a seeded random subset of each class, for quick runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lifelong.benchmarks._idx import IdxError, check_header, read_header, read_idx
from lifelong.incremental.streams import (
    Stream,
    build_class_incremental_stream,
    resolve_class_order,
    split_class_counts,
)
from lifelong.platform.config import ConfigError
from lifelong.platform.registry import register

#: where Debian's ``dataset-fashion-mnist`` puts the four gzipped files
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
#: torchvision's layout under a data root
TORCHVISION_FOLDER = Path("FashionMNIST") / "raw"
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: sha256 of each file's uncompressed bytes in the official release (the gzipped files are re-compressed by
#: some distributors, Debian included, so the compressed bytes differ while these do not)
OFFICIAL_SHA256: dict[str, str] = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASS_NAMES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                          "Bag", "Ankle boot"]
N_CLASSES = 10
IMAGE_SHAPE = (28, 28)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
GET_IT = (f"install the Debian package with `apt-get install {DEBIAN_PACKAGE}` (or `make data`), or give "
          f"--set data_root=DIR, a folder with the four IDX files (gzipped or not) or DIR/{TORCHVISION_FOLDER}/")


@dataclass
class SplitFashionMNISTConfig:
    """Options of ``split-fashion-mnist`` (those of ``split-digits`` plus where the files are and how checked)."""

    data_root: str = ""  # '' = the Debian package's folder
    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    train_per_class: int = 0  # 0 = all 6,000 training images of each class
    test_per_class: int = 0  # 0 = all 1,000 test images of each class
    normalize: bool = True
    verify_checksums: bool = True
    task_labels: bool = True
    seed: int = 0
    #: few-shot class-incremental (FSCIL): >0 keeps only this many training samples of each class after the
    #: first experience (the base stage, sized by initial_classes); docs/few-shot.md
    shots: int = 0

    def validate(self) -> None:
        for name in ("train_per_class", "test_per_class", "shots"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or positive, got {getattr(self, name)}")
        resolve_class_order(range(N_CLASSES), self.seed, self.class_order, self.shuffle_classes)
        split_class_counts(N_CLASSES, self.n_experiences, initial_classes=self.initial_classes, uneven=self.uneven)
        check_files(locate_files(self.data_root))


def locate_files(data_root: str = "") -> dict[str, Path]:
    """The four files, found in ``data_root`` (or its ``FashionMNIST/raw``) or, without one, in the Debian
    package's folder; ``ConfigError`` with what is missing and how to get the data otherwise."""
    if data_root.strip():
        root = Path(os.path.expanduser(data_root)).absolute()
        if not root.is_dir():
            raise ConfigError(f"split-fashion-mnist: data_root {root} is not a folder; {GET_IT}")
        candidates = [root, root / TORCHVISION_FOLDER]
    else:
        candidates = [DEBIAN_DIR]
    best: tuple[Path, dict[str, Path]] | None = None
    for folder in candidates:
        found = {key: path for key, name in FILES.items()
                 for path in (folder / name, folder / f"{name}.gz") if path.is_file()}
        if len(found) == len(FILES):
            return {key: found[key] for key in FILES}
        if found and (best is None or len(found) > len(best[1])):
            best = (folder, found)
    if best is not None:
        folder, found = best
        missing = ", ".join(f"{FILES[k]}[.gz]" for k in FILES if k not in found)
        raise ConfigError(f"split-fashion-mnist: {folder} holds only {len(found)} of the 4 Fashion-MNIST files "
                          f"(missing {missing}); {GET_IT}")
    if not data_root.strip():
        raise ConfigError(f"split-fashion-mnist: no data_root given and no Fashion-MNIST files in {DEBIAN_DIR}, "
                          f"the folder of the Debian package {DEBIAN_PACKAGE}; {GET_IT}")
    raise ConfigError(f"split-fashion-mnist: no Fashion-MNIST files in {candidates[0]} nor in {candidates[1]} "
                      f"(expected {', '.join(f'{n}[.gz]' for n in FILES.values())}); {GET_IT}")


def check_files(files: dict[str, Path]) -> None:
    """The cheap checks (headers only): images of 28x28 and labels, as many labels as images per split."""
    counts: dict[str, int] = {}
    for key, path in files.items():
        header = read_header(path)
        is_images = key.endswith("images")
        check_header(path, header, ndim=3 if is_images else 1, trailing_shape=IMAGE_SHAPE if is_images else ())
        counts[key] = header.shape[0]
    for split in ("train", "test"):
        if counts[f"{split}_images"] != counts[f"{split}_labels"]:
            raise IdxError(f"split-fashion-mnist: {files[f'{split}_images']} holds {counts[f'{split}_images']} "
                           f"images but {files[f'{split}_labels']} holds {counts[f'{split}_labels']} labels")


def load_arrays(files: dict[str, Path], verify_checksums: bool = True) -> dict[str, np.ndarray]:
    """Read and check the four files fully (see the module docstring); uint8 arrays by key of ``FILES``."""
    check_files(files)
    arrays: dict[str, np.ndarray] = {}
    for key, path in files.items():
        is_images = key.endswith("images")
        array, digest = read_idx(path, ndim=3 if is_images else 1, trailing_shape=IMAGE_SHAPE if is_images else ())
        if verify_checksums and digest != OFFICIAL_SHA256[key]:
            raise IdxError(f"{path}: not the official Fashion-MNIST {key.replace('_', ' ')} ({array.shape[0]} items; "
                           f"the bytes differ from the release: a file of another data set such as MNIST, or a "
                           f"modified copy); set verify_checksums=false to load it as it is")
        if not is_images and array.size and int(array.max()) >= N_CLASSES:
            raise IdxError(f"{path}: label {int(array.max())} is outside Fashion-MNIST's classes 0..{N_CLASSES - 1}")
        arrays[key] = array
    missing = sorted(set(range(N_CLASSES)) - set(np.unique(arrays["train_labels"]).tolist()))
    if missing:
        raise IdxError(f"{files['train_labels']}: no training images of class(es) {missing}; every class of "
                       f"0..{N_CLASSES - 1} needs some")
    return arrays


def _subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``per_class`` items of each class (all when 0), in file order."""
    if not per_class:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(N_CLASSES)]
    return np.sort(np.concatenate(keep))


def _images(array: np.ndarray, normalize: bool) -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0).unsqueeze(1)
    if normalize:
        x = x.sub_(FASHION_MEAN[0]).div_(FASHION_STD[0])
    return x


def fashion_mnist_stream(name: str, config: Any, to_inputs: Callable[[np.ndarray, int], Any],
                         input_shape: tuple[int, ...], info: Callable[[Any, Any], dict[str, Any]]) -> Stream:
    """A class-incremental stream of Fashion-MNIST items as ``to_inputs(uint8 images, split index)`` makes them
    (0 train, 1 test), for every benchmark built on the IDX files: the files located and checked, the class order
    and the ``*_per_class`` subsets fixed by the seed, FSCIL ``shots`` where the config has them; ``info(x_train,
    y_train)`` adds the benchmark's own entries to the stream's info."""
    import torch

    files = locate_files(config.data_root)
    arrays = load_arrays(files, config.verify_checksums)
    order = resolve_class_order(range(N_CLASSES), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(N_CLASSES, config.n_experiences, initial_classes=config.initial_classes,
                                uneven=config.uneven)
    parts = {}
    for k, (split, per_class) in enumerate((("train", config.train_per_class), ("test", config.test_per_class))):
        labels = arrays[f"{split}_labels"]
        idx = _subsample(labels, per_class, config.seed)
        parts[split] = (to_inputs(arrays[f"{split}_images"][idx], k), torch.from_numpy(labels[idx].astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
    return build_class_incremental_stream(
        name,
        train_data=(x_train, y_train),
        train_targets=y_train.tolist(),
        test_data=(x_test, y_test),
        test_targets=y_test.tolist(),
        class_order=order,
        counts=counts,
        input_shape=input_shape,
        class_names=list(CLASS_NAMES),
        task_labels=config.task_labels,
        shots=getattr(config, "shots", 0),
        seed=config.seed,
        info={"files": {key: str(path) for key, path in files.items()}, "n_train": len(y_train),
              "n_test": len(y_test), **info(x_train, y_train)},
    )


@register("benchmark", "split-fashion-mnist", config=SplitFashionMNISTConfig,
          summary="Fashion-MNIST from its IDX files (Debian package or data_root), 10 classes, 1x28x28")
def split_fashion_mnist(config: SplitFashionMNISTConfig) -> Stream:
    """Build the stream; the seed fixes the class order and the ``*_per_class`` subsets."""
    return fashion_mnist_stream(
        "split-fashion-mnist", config, lambda images, _: _images(images, config.normalize), (1, *IMAGE_SHAPE),
        lambda x, y: {
            "dataset": "Fashion-MNIST",
            "verify_checksums": config.verify_checksums,
            "normalization": ({"mean": list(FASHION_MEAN), "std": list(FASHION_STD)} if config.normalize
                              else {"mean": [0.0], "std": [1.0]}),
        })
