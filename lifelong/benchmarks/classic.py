"""The classic class-incremental image streams: ``split-mnist``, ``split-cifar10``, ``split-cifar100``,
``split-tinyimagenet``.

The data sets are the ones Avalanche 0.6.0's classic benchmarks (``SplitMNIST``, ``SplitCIFAR10/100``,
``SplitTinyImageNet``) load: Avalanche's ``TensorMNIST``, torchvision's ``CIFAR10``/``CIFAR100`` (what
``avalanche.benchmarks.datasets.external_datasets.cifar`` wraps) and Avalanche's ``TinyImagenet``, with the same
default train/eval transforms and normalisation. What differs from those builders, and why:

- the data are read from a ``data_root`` the user gives, and downloaded only when ``download: true`` (Avalanche
  downloads by default into ``~/.avalanche/data``; this platform runs offline). A missing root or missing files
  is one ``ConfigError`` naming the path expected and how to get the data, raised when the config is validated,
  so a run fails before anything is written.
- the class split, class order and relabelling are the platform's (``split_class_counts``,
  ``resolve_class_order``, ``build_class_incremental_stream``): a split that does not divide is refused (or
  given to the last experience) instead of silently dropping classes.
- CIFAR files are checked against torchvision's official md5 sums (``verify_checksums: true``, the default);
  ``verify_checksums: false`` loads the same pickle layout without the md5 check, for re-packed copies of the
  data (and for the tests, which write small files in the real format).
- TinyImageNet's train transform adds ``RandomCrop(64, padding=4)`` to Avalanche's horizontal flip (the
  augmentation of Mammoth's seq-tinyimg), so all three colour streams get crop + flip; normalisation is
  Avalanche's. ``augment: false`` uses the eval transform for training too.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lifelong.incremental.streams import (
    Stream,
    build_class_incremental_stream,
    resolve_class_order,
    split_class_counts,
)
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register

# Normalisation statistics of Avalanche 0.6.0's classic benchmarks (cmnist.py, ccifar10.py, ccifar100.py,
# ctiny_imagenet.py, which reuses the CIFAR-10 statistics).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
TINY_MEAN, TINY_STD = CIFAR10_MEAN, CIFAR10_STD

CIFAR_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
MNIST_HOME = "https://ossci-datasets.s3.amazonaws.com/mnist/"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

MNIST_RAW_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100_FILES: tuple[str, ...] = ("train", "test", "meta")
TINY_FILES: tuple[str, ...] = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")


@dataclass
class _ClassicConfig:
    """Fields every classic stream shares; ``data_root`` is the folder that holds the data set's own folder."""

    data_root: str = ""
    download: bool = False
    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    task_labels: bool = True
    seed: int = 0


@dataclass
class SplitMNISTConfig(_ClassicConfig):
    """Options of ``split-mnist`` (no augmentation, as in Avalanche's SplitMNIST)."""

    def validate(self) -> None:
        _check_data(self, _MNIST)


@dataclass
class SplitCIFAR10Config(_ClassicConfig):
    """Options of ``split-cifar10``; ``augment`` is the train-time random crop and horizontal flip."""

    augment: bool = True
    verify_checksums: bool = True

    def validate(self) -> None:
        _check_data(self, _CIFAR10)


@dataclass
class SplitCIFAR100Config(_ClassicConfig):
    """Options of ``split-cifar100`` (10 experiences of 10 classes by default)."""

    n_experiences: int = 10
    augment: bool = True
    verify_checksums: bool = True

    def validate(self) -> None:
        _check_data(self, _CIFAR100)


@dataclass
class SplitTinyImageNetConfig(_ClassicConfig):
    """Options of ``split-tinyimagenet`` (200 classes, 10 experiences of 20 by default)."""

    n_experiences: int = 10
    augment: bool = True

    def validate(self) -> None:
        _check_data(self, _TINY)


@dataclass(frozen=True)
class _Layout:
    """Where a data set lives under ``data_root`` and how a user gets it there; used for the error messages."""

    benchmark: str
    title: str
    folder: str  # the data set's own folder under data_root
    files: tuple[str, ...]  # relative to folder
    how_to_get: str
    download_size: str


_MNIST = _Layout(
    "split-mnist", "MNIST", "MNIST/raw", MNIST_RAW_FILES,
    f"or place the four gunzipped idx files from {MNIST_HOME} there (the official .gz files alone also "
    "work with --set download=true, which then only checks and unpacks them)", "12 MB",
)
_CIFAR10 = _Layout(
    "split-cifar10", "CIFAR-10", "cifar-10-batches-py", CIFAR10_FILES,
    f"or unpack cifar-10-python.tar.gz from {CIFAR_HOME} into the data root", "163 MB",
)
_CIFAR100 = _Layout(
    "split-cifar100", "CIFAR-100", "cifar-100-python", CIFAR100_FILES,
    f"or unpack cifar-100-python.tar.gz from {CIFAR_HOME} into the data root", "161 MB",
)
_TINY = _Layout(
    "split-tinyimagenet", "TinyImageNet", "tiny-imagenet-200", TINY_FILES,
    f"or unzip tiny-imagenet-200.zip from {TINY_URL} into the data root", "237 MB",
)


def _root(config: _ClassicConfig) -> Path:
    return Path(os.path.expanduser(config.data_root)).absolute()


def _check_data(config: _ClassicConfig, layout: _Layout) -> None:
    """Refuse a config whose data are not on disk (unless it may download them), with one actionable line.

    Run from ``validate`` so that ``resolve_config`` rejects it before a run starts or writes anything.
    """
    get = f"run once with --set download=true to fetch it there ({layout.download_size}), {layout.how_to_get}"
    if not config.data_root.strip():
        raise ConfigError(
            f"{layout.benchmark} needs data_root, the folder that holds {layout.folder}/: use "
            f"--set data_root=DIR; if DIR does not hold {layout.title} yet, add --set download=true to fetch it "
            f"({layout.download_size}), {layout.how_to_get}"
        )
    if config.download:
        return
    root = _root(config)
    folder = root / layout.folder
    missing = [name for name in layout.files if not (folder / name).exists()]
    if not missing:
        return
    if not root.is_dir():
        where = f"data_root {root} does not exist"
    elif (root / layout.files[0]).exists():
        where = (f"data_root {root} looks like the {layout.folder} folder itself; give the folder that holds "
                 f"{layout.folder}/ as data_root")
    else:
        where = f"no {layout.title} data in {root}: {folder / missing[0]} is missing"
    raise ConfigError(f"{layout.benchmark}: {where} (expected {folder}/{{{','.join(layout.files)}}}); {get}")


@contextlib.contextmanager
def _loader_messages(download: bool) -> Iterator[None]:
    """Avalanche and torchvision print on stdout, which would break ``--json`` output: download progress goes
    to stderr; without a download their chatter ("Files already downloaded and verified", said even though
    nothing was verified) is dropped, and failures are reported by ``_load`` in one line."""
    with contextlib.redirect_stdout(sys.stderr if download else io.StringIO()):
        yield


def _load(layout: _Layout, config: _ClassicConfig, make: Callable[[bool], Any], diagnose: Callable[[], str]) -> Any:
    """Call a loader, turning its failures (network, corrupt files) into one clear ``UserError`` line."""
    try:
        with _loader_messages(config.download):
            return make(config.download)
    except Exception as exc:  # user files can fail in any way (UnpicklingError, EOFError, KeyError, ...)
        detail = diagnose() or f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        action = (
            "the download failed; check the network or fetch the files by hand"
            if config.download
            else f"fetch it again with --set download=true after removing the broken files, {layout.how_to_get}"
        )
        raise UserError(f"{layout.benchmark}: cannot load {layout.title} from {_root(config)}: {detail}; {action}") from None


def _compose(*steps: Any) -> Any:
    from torchvision import transforms

    return transforms.Compose(list(steps))


def _image_transforms(size: int, mean: tuple[float, ...], std: tuple[float, ...], augment: bool,
                      crop_padding: int = 4) -> tuple[Any, Any]:
    """Avalanche's default PIL-image pipelines: (crop, flip,) ToTensor, Normalize."""
    from torchvision import transforms

    eval_transform = _compose(transforms.ToTensor(), transforms.Normalize(mean, std))
    if not augment:
        return eval_transform, eval_transform
    train_transform = _compose(
        transforms.RandomCrop(size, padding=crop_padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    )
    return train_transform, eval_transform


def _build(config: _ClassicConfig, layout: _Layout, *, train: Any, test: Any, n_classes: int,
           input_shape: tuple[int, int, int], class_names: list[str], train_transform: Any, eval_transform: Any,
           normalization: tuple[tuple[float, ...], tuple[float, ...]],
           extra_info: dict[str, Any] | None = None) -> Stream:
    """The platform's split of a loaded train/test pair, shared by the four streams.

    ``normalization`` (mean, std) is declared in ``stream.info`` so that strategies with pretrained backbones,
    which bring their own normalisation, can undo it."""
    order = resolve_class_order(range(n_classes), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(n_classes, config.n_experiences, initial_classes=config.initial_classes,
                                uneven=config.uneven)
    return build_class_incremental_stream(
        layout.benchmark,
        train_data=train,
        train_targets=[int(t) for t in train.targets],
        test_data=test,
        test_targets=[int(t) for t in test.targets],
        class_order=order,
        counts=counts,
        input_shape=input_shape,
        train_transform=train_transform,
        eval_transform=eval_transform,
        class_names=class_names,
        task_labels=config.task_labels,
        info={
            "dataset": layout.title,
            "data_root": str(_root(config)),
            "n_train": len(train),
            "n_test": len(test),
            "loader": f"{type(train).__module__}.{type(train).__name__}",
            "normalization": {"mean": list(normalization[0]), "std": list(normalization[1])},
            **(extra_info or {}),
        },
    )


# --------------------------------------------------------------------------------------------------- MNIST


@register("benchmark", "split-mnist", config=SplitMNISTConfig,
          summary="MNIST from data_root (Avalanche TensorMNIST), 10 classes, 1x28x28")
def split_mnist(config: SplitMNISTConfig) -> Stream:
    """MNIST as Avalanche's SplitMNIST reads it: float tensors in [0, 1], normalised, no augmentation."""
    from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST
    from torchvision import transforms

    _check_data(config, _MNIST)
    root = str(_root(config))

    def make(download: bool) -> tuple[Any, Any]:
        return (TensorMNIST(root=root, train=True, download=download),
                TensorMNIST(root=root, train=False, download=download))

    train, test = _load(_MNIST, config, make, lambda: "")
    normalise = _compose(transforms.Normalize(MNIST_MEAN, MNIST_STD))
    return _build(config, _MNIST, train=train, test=test, n_classes=10, input_shape=(1, 28, 28),
                  class_names=list(train.classes), train_transform=normalise, eval_transform=normalise,
                  normalization=(MNIST_MEAN, MNIST_STD))


# --------------------------------------------------------------------------------------------------- CIFAR


def _cifar_class(base: type, verify: bool) -> type:
    """torchvision's class itself, or a subclass with the md5 sums removed (files must still exist)."""
    if verify:
        return base
    return type(
        f"Unverified{base.__name__}",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
            "__doc__": f"{base.__name__} read without the md5 check (``verify_checksums: false``).",
        },
    )


def _cifar_md5_diagnosis(base: type, root: Path) -> str:
    """Name the first file whose md5 differs from torchvision's official sum ('' if all match)."""
    from torchvision.datasets.utils import check_integrity

    folder = root / base.base_folder
    for name, md5 in [*base.train_list, *base.test_list, [base.meta["filename"], base.meta["md5"]]]:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if not check_integrity(str(path), md5):
            return (f"{path} does not match the md5 of the official {base.__name__} release (corrupted or "
                    f"re-packed; set verify_checksums=false to load re-packed files as they are)")
    return ""


def _split_cifar(config: SplitCIFAR10Config | SplitCIFAR100Config, layout: _Layout, base: type, n_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> Stream:
    _check_data(config, layout)
    root = _root(config)
    cls = _cifar_class(base, config.verify_checksums)

    def make(download: bool) -> tuple[Any, Any]:
        # torchvision downloads the official archive and checks its md5 itself, whatever cls says
        return (cls(str(root), train=True, download=download), cls(str(root), train=False, download=download))

    diagnose = (lambda: _cifar_md5_diagnosis(base, root)) if config.verify_checksums else (lambda: "")
    train, test = _load(layout, config, make, diagnose)
    if sorted(set(int(t) for t in train.targets)) != list(range(n_classes)):
        raise UserError(f"{layout.benchmark}: {root / layout.folder} holds labels "
                        f"{sorted(set(int(t) for t in train.targets))[:12]}..., expected all of 0..{n_classes - 1}")
    train_transform, eval_transform = _image_transforms(32, mean, std, config.augment)
    return _build(config, layout, train=train, test=test, n_classes=n_classes, input_shape=(3, 32, 32),
                  class_names=list(train.classes), train_transform=train_transform, eval_transform=eval_transform,
                  normalization=(mean, std),
                  extra_info={"augment": config.augment, "verify_checksums": config.verify_checksums})


@register("benchmark", "split-cifar10", config=SplitCIFAR10Config,
          summary="CIFAR-10 from data_root (torchvision, as Avalanche), 10 classes, 3x32x32")
def split_cifar10(config: SplitCIFAR10Config) -> Stream:
    """CIFAR-10 with Avalanche's SplitCIFAR10 transforms (crop + flip for training, CIFAR-10 statistics)."""
    from torchvision.datasets import CIFAR10

    return _split_cifar(config, _CIFAR10, CIFAR10, 10, CIFAR10_MEAN, CIFAR10_STD)


@register("benchmark", "split-cifar100", config=SplitCIFAR100Config,
          summary="CIFAR-100 from data_root (torchvision, as Avalanche), 100 classes, 3x32x32")
def split_cifar100(config: SplitCIFAR100Config) -> Stream:
    """CIFAR-100 (fine labels) with Avalanche's SplitCIFAR100 transforms and CIFAR-100 statistics."""
    from torchvision.datasets import CIFAR100

    return _split_cifar(config, _CIFAR100, CIFAR100, 100, CIFAR100_MEAN, CIFAR100_STD)


# ------------------------------------------------------------------------------------------- TinyImageNet


def _tiny_class_names(folder: Path, wnids: list[str]) -> list[str]:
    """Readable names from words.txt (first synonym: 'goldfish'), falling back to the WordNet id."""
    words: dict[str, str] = {}
    path = folder / "words.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            if text:
                words[wnid.strip()] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def _tiny_diagnosis(folder: Path) -> str:
    """What is wrong with a TinyImageNet folder that Avalanche could not read ('' if nothing obvious)."""
    wnids_path = folder / "wnids.txt"
    if not wnids_path.is_file():
        return f"{wnids_path} is missing"
    wnids = [w.strip() for w in wnids_path.read_text().splitlines() if w.strip()]
    if len(wnids) != 200:
        return f"{wnids_path} lists {len(wnids)} classes, Avalanche's TinyImagenet expects 200"
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            return f"{images} is missing"
    return ""


@register("benchmark", "split-tinyimagenet", config=SplitTinyImageNetConfig,
          summary="TinyImageNet from data_root (Avalanche TinyImagenet), 200 classes, 3x64x64")
def split_tinyimagenet(config: SplitTinyImageNetConfig) -> Stream:
    """TinyImageNet's train and val folders as Avalanche reads them; val (50 images a class) is the test set."""
    from avalanche.benchmarks.datasets import TinyImagenet

    _check_data(config, _TINY)
    root = _root(config)

    def make(download: bool) -> tuple[Any, Any]:
        return (TinyImagenet(root=root, train=True, download=download),
                TinyImagenet(root=root, train=False, download=download))

    train, test = _load(_TINY, config, make, lambda: _tiny_diagnosis(root / _TINY.folder))
    wnids = [train.id2label[i] for i in range(200)]
    train_transform, eval_transform = _image_transforms(64, TINY_MEAN, TINY_STD, config.augment)
    return _build(config, _TINY, train=train, test=test, n_classes=200, input_shape=(3, 64, 64),
                  class_names=_tiny_class_names(root / _TINY.folder, wnids), train_transform=train_transform,
                  eval_transform=eval_transform, normalization=(TINY_MEAN, TINY_STD),
                  extra_info={"augment": config.augment, "wnids": wnids})
