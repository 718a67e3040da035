"""``split-event-fashion-mnist``: Fashion-MNIST seen by a simulated event camera, as a class-incremental stream.

A stand-in for N-MNIST-style neuromorphic data (Orchard et al. 2015, "Converting static image datasets to
spiking neuromorphic datasets using saccades"): there an event sensor on a pan-tilt unit made three saccades
over each still MNIST digit shown on a monitor, tracing a triangle. Here each Fashion-MNIST image is placed on a
``canvas`` x ``canvas`` black field (34 x 34 as N-MNIST) and moved along the same kind of path, an isosceles
triangle of side ``amplitude`` pixels traced in three saccades of ``saccade_ms`` milliseconds, rendered at
``steps_per_saccade`` sub-pixel positions per saccade (bilinear interpolation, ``scipy.ndimage.shift``), and the
rendered video goes through the event camera of ``benchmarks/event_camera.py``. The events are binned into
``n_bins`` equal time bins with two polarity channels.

What is taken and what is chosen: N-MNIST's recording (three saccades, triangle, 34 x 34, about 300 ms); the
pixel model of v2e/ESIM. Chosen here: every image follows the same path (as in N-MNIST, where the path was
fixed); the sensor's settings are options (``contrast_threshold`` 0.2, no refractory period, no noise by
default); intensities are the image's grey values in [0, 1]. Each sample is a float tensor of event counts of
shape ``(2 * n_bins, canvas, canvas)``: the bins stacked along the channel axis, bin-major (channels ``2t`` and
``2t + 1`` are bin t's ON and OFF counts), so every backbone and strategy of the platform takes it as an image,
and the ``hsvt`` backbone reads it back as ``n_bins`` frames of two channels.

Files, checks, split arithmetic, seeded subsets and class order are those of ``split-fashion-mnist``
(``benchmarks/fashion_mnist.py``), and its small test files work here; only the defaults of ``train_per_class``
and ``test_per_class`` differ (1,000 and 200 a class, not all): the event frames are computed when the stream is
built (about 5 ms an image on one core of a shared machine, about 5,000 events an image with the default
sensor) and held as float32 event counts, not normalised, 55 KB an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lifelong.benchmarks.event_camera import EventCameraConfig, simulate_frames
from lifelong.benchmarks.fashion_mnist import (
    IMAGE_SHAPE,
    N_CLASSES,
    check_files,
    fashion_mnist_stream,
    locate_files,
)
from lifelong.incremental.streams import Stream, resolve_class_order, split_class_counts
from lifelong.platform.registry import register

#: chunk of images simulated at once (bounds the memory of the rendered videos)
CHUNK = 512


@dataclass
class SplitEventFashionMNISTConfig:
    """Options of ``split-event-fashion-mnist``: those of ``split-fashion-mnist`` (but ``normalize``), the
    saccade path and the sensor."""

    data_root: str = ""  # '' = the Debian package's folder
    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    train_per_class: int = 1000  # 0 = all 6,000 training images of each class (about 3.3 GB of frames)
    test_per_class: int = 200  # 0 = all 1,000 test images of each class
    verify_checksums: bool = True
    task_labels: bool = True
    seed: int = 0
    n_bins: int = 6  # time bins T
    canvas: int = 34  # side of the sensor's field, in pixels (N-MNIST: 34)
    amplitude: float = 4.0  # side of the triangular path, in pixels
    steps_per_saccade: int = 8  # rendered frames per saccade
    saccade_ms: float = 100.0
    black_level: float = 0.1  # intensity of black (the field, the image's black pixels), of white 1
    contrast_threshold: float = 0.3
    refractory_ms: float = 0.0
    noise_rate: float = 0.0  # background events per pixel per second

    def validate(self) -> None:
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or positive, got {getattr(self, name)}")
        if not 1 <= self.n_bins <= 64:
            raise ValueError(f"n_bins must be between 1 and 64, got {self.n_bins}")
        if not 1 <= self.steps_per_saccade <= 1000:
            raise ValueError(f"steps_per_saccade must be between 1 and 1000, got {self.steps_per_saccade}")
        if self.saccade_ms <= 0:
            raise ValueError(f"saccade_ms must be positive, got {self.saccade_ms}")
        if self.amplitude < 0:
            raise ValueError(f"amplitude must be 0 or positive pixels, got {self.amplitude}")
        if self.canvas < IMAGE_SHAPE[0] + self.amplitude or self.canvas > 256:
            raise ValueError(f"canvas must hold the 28-pixel image moved by amplitude={self.amplitude} pixels "
                             f"(at least {IMAGE_SHAPE[0] + self.amplitude:g}) and be at most 256, got {self.canvas}")
        if not 0 <= self.black_level < 1:
            raise ValueError(f"black_level must be in [0, 1), got {self.black_level}")
        self.sensor().validate()
        resolve_class_order(range(N_CLASSES), self.seed, self.class_order, self.shuffle_classes)
        split_class_counts(N_CLASSES, self.n_experiences, initial_classes=self.initial_classes, uneven=self.uneven)
        check_files(locate_files(self.data_root))

    def sensor(self) -> EventCameraConfig:
        """The event camera these options describe."""
        return EventCameraConfig(contrast_threshold=self.contrast_threshold, refractory=self.refractory_ms / 1000,
                                 noise_rate=self.noise_rate)


def saccade_path(amplitude: float, steps_per_saccade: int) -> np.ndarray:
    """Offsets ``(dy, dx)`` of the image, in pixels from the canvas centre, along three saccades tracing an
    isosceles triangle of side ``amplitude`` and back to the start: ``[3 * steps + 1, 2]``."""
    a = amplitude
    corners = np.array([[-a / 2, 0.0], [a / 2, a / 2], [a / 2, -a / 2], [-a / 2, 0.0]])
    legs = [corners[i] + (corners[i + 1] - corners[i]) * (np.arange(steps_per_saccade) / steps_per_saccade)[:, None]
            for i in range(3)]
    return np.concatenate([*legs, corners[-1:]])


def render_saccades(images: np.ndarray, canvas: int, path: np.ndarray, black_level: float = 0.0) -> np.ndarray:
    """The video of ``images`` ``[B, h, w]`` (uint8) on a canvas, moved along ``path``: float
    ``[len(path), B, canvas, canvas]`` of intensities in [``black_level``, 1] (bilinear sub-pixel shifts, as
    ``scipy.ndimage.shift(order=1)``; the field and the image's black pixels at ``black_level``, as a monitor's
    black)."""
    b, h, w = images.shape
    pad = int(np.ceil(np.abs(path).max(initial=0.0))) + 1
    size = canvas + 2 * pad
    base = np.full((b, size, size), black_level, np.float32)
    top, left = pad + (canvas - h) // 2, pad + (canvas - w) // 2
    base[:, top:top + h, left:left + w] = black_level + (1.0 - black_level) * (images.astype(np.float32) / 255.0)
    frames = np.empty((len(path), b, canvas, canvas), np.float32)
    for i, (dy, dx) in enumerate(path):  # out[y, x] = base[y - dy, x - dx], interpolated
        iy, ix = int(np.floor(dy)), int(np.floor(dx))
        fy, fx = float(dy - iy), float(dx - ix)

        def window(oy: int, ox: int) -> np.ndarray:
            y0, x0 = pad - iy - oy, pad - ix - ox
            return base[:, y0:y0 + canvas, x0:x0 + canvas]

        frames[i] = ((1 - fy) * ((1 - fx) * window(0, 0) + fx * window(0, 1))
                     + fy * ((1 - fx) * window(1, 0) + fx * window(1, 1)))
    return frames


def event_frames(images: np.ndarray, config: SplitEventFashionMNISTConfig, seed: int) -> np.ndarray:
    """The binned events of ``images`` along the saccade path: float32 ``[B, 2 * n_bins, canvas, canvas]``."""
    path = saccade_path(config.amplitude, config.steps_per_saccade)
    times = np.arange(len(path)) * (config.saccade_ms / 1000 / config.steps_per_saccade)
    sensor = config.sensor()
    rng = np.random.default_rng(seed)
    out = np.empty((len(images), 2 * config.n_bins, config.canvas, config.canvas), np.float32)
    for start in range(0, len(images), CHUNK):
        video = render_saccades(images[start:start + CHUNK], config.canvas, path, config.black_level)
        frames = simulate_frames(video, times, config.n_bins, sensor, rng)
        out[start:start + CHUNK] = frames.reshape(len(frames), -1, config.canvas, config.canvas)
    return out


@register("benchmark", "split-event-fashion-mnist", config=SplitEventFashionMNISTConfig,
          summary="Fashion-MNIST through a simulated event camera (N-MNIST-style saccades), 2*T x 34 x 34")
def split_event_fashion_mnist(config: SplitEventFashionMNISTConfig) -> Stream:
    """Build the stream; the seed fixes the class order, the subsets and the sensor noise."""
    import torch

    return fashion_mnist_stream(
        "split-event-fashion-mnist", config,
        lambda images, k: torch.from_numpy(event_frames(images, config, seed=config.seed * 2 + k)),
        (2 * config.n_bins, config.canvas, config.canvas),
        lambda x, y: {
            "dataset": "Fashion-MNIST through a simulated event camera (a stand-in for N-MNIST-style recordings)",
            "n_bins": config.n_bins,
            "layout": "channels 2t, 2t+1 = ON, OFF event counts of time bin t",
            "events_per_sample": float(x.sum() / max(1, len(y))),
        })
