"""The ``encoder`` option of the spiking strategies: which spike encoder turns a stream's sound into spikes.

Strategies never import ``lifelong/encoders/`` (a sibling plugin family): the encoder is built through the
registry by name. Image streams keep direct coding (the image repeated at every step, as before); an audio stream
(``info["modality"] == "audio"``, the spoken-word benchmarks) needs an encoder, ``auto`` meaning ``spiketrum``.
"""

from __future__ import annotations

from typing import Any

from lifelong.incremental.streams import Stream
from lifelong.platform import registry
from lifelong.platform.errors import UserError

#: ``encoder`` values that are not registered encoders: ``auto`` (direct for images, spiketrum for sound) and
#: ``direct`` (images only)
SPECIAL = ("auto", "direct")
DEFAULT_AUDIO_ENCODER = "spiketrum"


def check_encoder(name: str, options: dict[str, Any]) -> None:
    """``ValueError`` naming the allowed values for an unknown encoder or bad ``encoder_config`` (built once)."""
    if name == "direct":
        if options:
            raise ValueError("encoder_config is set but encoder=direct takes no options")
        return
    if name not in SPECIAL:
        registry.get("encoder", name)  # unknown: names the known encoders
    registry.create("encoder", DEFAULT_AUDIO_ENCODER if name == "auto" else name, **options)


class AudioVisualInputs:
    """Split an audio-visual sample ``[B, pixels + samples]`` into (image ``[B, C, H, W]``, audio spikes
    ``[T, B, lines]``), the pair the fusion extractors take."""

    def __init__(self, encoder: Any, image_shape: tuple[int, int, int]) -> None:
        self.encoder = encoder
        self.image_shape = image_shape

    def __call__(self, x: Any) -> tuple[Any, Any]:
        pixels = int(self.image_shape[0] * self.image_shape[1] * self.image_shape[2])
        flat = x.reshape(len(x), -1)
        return flat[:, :pixels].reshape(len(x), *self.image_shape), self.encoder(flat[:, pixels:])


def build_encoder(name: str, options: dict[str, Any], stream: Stream) -> tuple[Any | None, tuple[int, ...]]:
    """The encoder for ``stream`` (``None`` for direct coding) and the input shape the extractor will see: the
    spike train's ``(lines, steps)`` for sound, ``(C, H, W, lines, steps)`` for audio-visual streams."""
    modality = stream.info.get("modality")
    audio = modality in ("audio", "audio-visual")
    if not audio:
        if name not in SPECIAL:
            raise UserError(f"encoder={name}: the stream {stream.name} holds images, which keep direct coding; spike "
                            f"encoders apply to audio streams (split-spoken-digits, split-spoken-words)")
        return None, tuple(stream.input_shape)
    if name == "direct":
        known = ", ".join(s.name for s in registry.list_plugins("encoder"))
        raise UserError(f"encoder=direct: the stream {stream.name} holds sound, which needs a spike encoder; "
                        f"allowed values: auto, {known}")
    chosen = DEFAULT_AUDIO_ENCODER if name == "auto" else name
    sample_rate = int(stream.info.get("sample_rate", 16000))
    encoder = registry.create("encoder", chosen, **{"sample_rate": sample_rate, **options})
    if modality == "audio-visual":
        image_shape = tuple(int(v) for v in stream.info["image_shape"])
        return AudioVisualInputs(encoder, image_shape), (*image_shape, *encoder.output_shape())  # type: ignore[return-value]
    return encoder, tuple(encoder.output_shape())
