"""The preprocessing spec: how raw pixels become the tensor a model was trained on.

It travels with a checkpoint, can be set by a recipe and overridden on the command line, so the
same images calibrate and evaluate the model the way it was trained. Without one, images must
already have the model's input size: silently resizing would calibrate on data the model never
sees in deployment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIDE = 16384  # pixels; a larger resize target is a typo, and one such image would need gigabytes


class Preprocess(BaseModel):
    """Pixel preprocessing: decode to [0, 1], resize to `size` if set, normalize by mean/std."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] | None = Field(None, description="(height, width) to resize to; None keeps the size")
    channels: int | None = Field(None, description="1 (grayscale) or 3 (RGB); None keeps what the file has")
    mean: tuple[FiniteFloat, ...] = Field((0.0,), min_length=1,
                                          description="per-channel mean subtracted after scaling to [0, 1]")
    std: tuple[FiniteFloat, ...] = Field((1.0,), min_length=1, description="per-channel std divided after the mean")

    @field_validator("size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(1 <= s <= MAX_SIDE for s in v):
            raise ValueError(f"height and width must be between 1 and {MAX_SIDE} pixels")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("channels must be 1 or 3")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be positive")
        return v

    def merged(self, override: Preprocess | None) -> Preprocess:
        """Fields explicitly set in `override` win; the rest keep this spec's values."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))
