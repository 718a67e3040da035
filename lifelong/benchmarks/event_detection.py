"""``event-detection``: Fashion-MNIST sprites moving on a larger field, seen by the simulated event camera, with
exact boxes per time bin; a stand-in for event-camera detection sets (Gen1; the fall-detection set of HsVT).

Neither data set can be had offline, so clips are made the way such recordings arise: objects move in front of
a still sensor, the event camera of ``benchmarks/event_camera.py`` turns the rendered video into events, and the
events are binned into ``n_bins`` frames of two polarity channels. Because the objects are placed by the
program, every box is exact: the tight box of the sprite's non-zero pixels at its (sub-pixel) position at the
end of each bin.

The "fall" analogue: each object (``sprite`` x ``sprite`` pixels, a Fashion-MNIST item scaled down; train clips
use training images, test clips test images) is one of two kinds, drawn with ``fall_probability``:

- ``walking`` (class 0): moves at a constant speed in a random direction for the whole clip, bouncing off the
  field's edges;
- ``fallen`` (class 1): walks the same way, then at a random step in the first half of the clip "falls": it
  turns by 90 degrees (lies down), drops straight down at ``drop_speed`` pixels a step to a floor below it,
  and lies still for the rest of the clip. It is labelled ``walking`` in the bins that end before the fall and
  ``fallen`` from the bin in which it starts to fall. A still object emits no events (no noise by default),
  so after it lands only a model that remembers can find it: the split's ``still`` flags mark those boxes.

The field and black pixels are at ``black_level`` intensity (a monitor's black), white at 1. Clips hold 1 to
``max_objects`` objects, which may overlap. Nothing is cached: the clips are made when the benchmark is built
(seconds for the default sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.benchmarks.event_camera import EventCameraConfig, simulate_frames
from lifelong.benchmarks.fashion_mnist import load_arrays, locate_files
from lifelong.detection.data import DetectionSet, DetectionSplit
from lifelong.platform.registry import register

CLASS_NAMES: list[str] = ["walking", "fallen"]
CHUNK = 128


@dataclass
class EventDetectionConfig:
    """Options of ``event-detection``."""

    data_root: str = ""  # Fashion-MNIST's folder ('' = the Debian package's), for the sprites
    verify_checksums: bool = True
    n_train: int = 192  # clips
    n_test: int = 64
    canvas: int = 64
    sprite: int = 16
    max_objects: int = 2
    fall_probability: float = 0.5
    n_bins: int = 8
    steps_per_bin: int = 4  # rendered frames per bin
    bin_ms: float = 50.0
    min_speed: float = 0.5  # pixels per rendered step
    max_speed: float = 1.0
    drop_speed: float = 3.0
    black_level: float = 0.1
    contrast_threshold: float = 0.3
    refractory_ms: float = 0.0
    noise_rate: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        for name, high in (("n_train", 100_000), ("n_test", 100_000), ("max_objects", 8), ("n_bins", 64),
                           ("steps_per_bin", 100)):
            if not 1 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be between 1 and {high}, got {getattr(self, name)}")
        if not 4 <= self.sprite <= 28:
            raise ValueError(f"sprite must be between 4 and 28 pixels, got {self.sprite}")
        if self.canvas < 2 * self.sprite or self.canvas > 256 or self.canvas % 4:
            raise ValueError(f"canvas must be a multiple of 4 between twice the sprite ({2 * self.sprite}) and 256, "
                             f"got {self.canvas}")
        if not 0 <= self.fall_probability <= 1:
            raise ValueError(f"fall_probability must be in [0, 1], got {self.fall_probability}")
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= max_speed, got {self.min_speed} and {self.max_speed}")
        if self.drop_speed <= 0 or self.bin_ms <= 0:
            raise ValueError("drop_speed and bin_ms must be positive")
        if not 0 <= self.black_level < 1:
            raise ValueError(f"black_level must be in [0, 1), got {self.black_level}")
        self.sensor().validate()
        locate_files(self.data_root)

    def sensor(self) -> EventCameraConfig:
        """The event camera these options describe."""
        return EventCameraConfig(contrast_threshold=self.contrast_threshold, refractory=self.refractory_ms / 1000,
                                 noise_rate=self.noise_rate)


def make_sprites(images: np.ndarray, size: int) -> np.ndarray:
    """28x28 uint8 images -> ``size`` x ``size`` float intensities in [0, 1] (bilinear; exact zeros stay 0)."""
    from scipy.ndimage import zoom

    out = zoom(images.astype(np.float32) / 255.0, (1, size / images.shape[1], size / images.shape[2]), order=1)
    return np.clip(out, 0.0, 1.0)


def _support(sprite: np.ndarray) -> tuple[int, int, int, int]:
    """Row and column range ``(r0, r1, c0, c1)`` (inclusive) of the sprite's non-zero pixels."""
    rows, cols = np.flatnonzero(sprite.any(1)), np.flatnonzero(sprite.any(0))
    if not len(rows):
        return 0, sprite.shape[0] - 1, 0, sprite.shape[1] - 1
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def object_track(rng: np.random.Generator, config: EventDetectionConfig, falls: bool,
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Positions ``[steps + 1, 2]`` (top-left y, x), a lying-down flag per step, and the fall step (-1: none)."""
    steps = config.n_bins * config.steps_per_bin
    room = config.canvas - config.sprite
    pos = rng.uniform(0, room, 2)
    angle = rng.uniform(0, 2 * np.pi)
    vel = rng.uniform(config.min_speed, config.max_speed) * np.array([np.sin(angle), np.cos(angle)])
    fall = int(rng.integers(config.steps_per_bin, max(config.steps_per_bin + 1, steps // 2 + 1))) if falls else -1
    floor = 0.0
    track, lying = np.empty((steps + 1, 2)), np.zeros(steps + 1, bool)
    for s in range(steps + 1):
        if s == fall:
            floor = min(room, max(pos[0] + config.sprite / 2, rng.uniform(pos[0], room)))
        if fall >= 0 and s >= fall:
            lying[s] = True
            if s > fall:
                pos = np.array([min(floor, pos[0] + config.drop_speed), pos[1]])
        elif s > 0:
            pos = pos + vel
            for d in range(2):  # bounce off the edges
                if pos[d] < 0 or pos[d] > room:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], 0, room)
        track[s] = pos
    return track, lying, fall


def _paste(frame: np.ndarray, sprite: np.ndarray, y: float, x: float) -> None:
    """Draw ``sprite`` at sub-pixel ``(y, x)`` into ``frame`` (bilinear; the brighter pixel wins)."""
    h, w = sprite.shape
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - iy, x - ix
    patch = np.zeros((h + 1, w + 1), np.float32)
    patch[:h, :w] += (1 - fy) * (1 - fx) * sprite
    patch[:h, 1:] += (1 - fy) * fx * sprite
    patch[1:, :w] += fy * (1 - fx) * sprite
    patch[1:, 1:] += fy * fx * sprite
    ph, pw = min(h + 1, frame.shape[0] - iy), min(w + 1, frame.shape[1] - ix)
    region = frame[iy:iy + ph, ix:ix + pw]
    np.maximum(region, patch[:ph, :pw], out=region)


def make_clips(sprites: np.ndarray, n_clips: int, config: EventDetectionConfig, rng: np.random.Generator,
               ) -> DetectionSplit:
    """``n_clips`` clips with sprites drawn from ``sprites``: rendered, simulated, binned, with their boxes."""
    spb, t_bins, k = config.steps_per_bin, config.n_bins, config.max_objects
    steps = t_bins * spb
    boxes = np.zeros((n_clips, t_bins, k, 4), np.float32)
    labels = np.full((n_clips, t_bins, k), -1, np.int64)
    still = np.zeros((n_clips, t_bins, k), bool)
    frames = np.empty((n_clips, t_bins, 2, config.canvas, config.canvas), np.float32)
    times = np.arange(steps + 1) * (config.bin_ms / 1000 / spb)
    for start in range(0, n_clips, CHUNK):
        count = min(CHUNK, n_clips - start)
        video = np.full((steps + 1, count, config.canvas, config.canvas), config.black_level, np.float32)
        for c in range(count):
            for j in range(int(rng.integers(1, k + 1))):
                sprite = sprites[int(rng.integers(len(sprites)))]
                track, lying, fall = object_track(rng, config, bool(rng.uniform() < config.fall_probability))
                shapes = (sprite, np.rot90(sprite).copy())
                for s in range(steps + 1):
                    _paste(video[s, c], (1 - config.black_level) * shapes[int(lying[s])], *track[s])
                for b in range(t_bins):
                    end = (b + 1) * spb
                    r0, r1, c0, c1 = _support(shapes[int(lying[end])])
                    y, x = track[end]
                    boxes[start + c, b, j] = (x + c0, y + r0, x + c1 + 1, y + r1 + 1)
                    labels[start + c, b, j] = int(0 <= fall < end)
                    # from one step before the bin: a crossing at the very end of a frame interval is
                    # timestamped on the bin boundary, which belongs to the later bin
                    window = slice(max(0, b * spb - 1), end + 1)
                    still[start + c, b, j] = bool((np.ptp(track[window], axis=0) == 0).all()
                                                  and lying[window].all() and 0 <= fall < b * spb - 1)
        np.clip(video, config.black_level, 1.0, out=video)
        frames[start:start + count] = simulate_frames(video, times, t_bins, config.sensor(), rng)
    return DetectionSplit(frames=frames, boxes=boxes, labels=labels, still=still)


@register("benchmark", "event-detection", config=EventDetectionConfig, produces="detection",
          summary="Fashion-MNIST sprites walking or falling on a 64x64 field, simulated events, exact boxes")
def event_detection(config: EventDetectionConfig) -> DetectionSet:
    """Build the train and test clips; the seed fixes the sprites, the tracks and the sensor noise."""
    import torch

    arrays = load_arrays(locate_files(config.data_root), config.verify_checksums)
    rng = np.random.default_rng(config.seed)
    splits = {}
    for split, n, key in (("train", config.n_train, "train_images"), ("test", config.n_test, "test_images")):
        pick = rng.choice(len(arrays[key]), size=min(len(arrays[key]), 4 * n), replace=False)
        data = make_clips(make_sprites(arrays[key][pick], config.sprite), n, config, rng)
        data.frames = torch.from_numpy(data.frames)
        data.validate()
        splits[split] = data
    train, test = splits["train"], splits["test"]
    return DetectionSet(
        name="event-detection", train=train, test=test, class_names=list(CLASS_NAMES),
        info={"dataset": "simulated event-camera clips of Fashion-MNIST sprites (a stand-in for Gen1 and the "
                         "fall-detection set)",
              "n_train": len(train), "n_test": len(test), "frame_shape": list(train.frames.shape[1:]),
              "events_per_clip": float(train.frames.sum() / len(train)),
              "still_boxes_test": int(test.still.sum()), "boxes_test": int((test.labels >= 0).sum())},
    )
