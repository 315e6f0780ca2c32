"""Batched CIFAR augmentation on tensors, on the training device, with no per-image Python loop.

``pad_crop_flip`` is the Wide-ResNet CIFAR augmentation (zero-pad by 4, random 32 x 32 crop, random horizontal
flip) applied to a whole batch at once; ``ImageTransform`` turns uint8 batches into float inputs, augmenting
in training and optionally normalising per channel (the paper does not normalise, so it is off by default).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CIFAR_STATS", "ImageTransform", "cifar_transform", "pad_crop_flip"]

Stats = tuple[float, float, float]

CIFAR_STATS: dict[str, tuple[Stats, Stats]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""Per-channel (mean, std) of each training set, for pixels scaled to [0, 1]."""


def _draw(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``size`` integers uniform in ``[0, high)``, drawn with ``generator`` on its own device, moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.randint(0, high, (size,), generator=generator, device=draw_device).to(device)


def pad_crop_flip(
    x: Tensor, padding: int = 4, generator: torch.Generator | None = None, flip: bool = True
) -> Tensor:
    """Zero-pad a batch ``(N, C, H, W)`` by ``padding``, crop each image back to ``H x W`` at its own random
    offset, and mirror each image horizontally with probability 1/2 (when ``flip``).

    Offsets are drawn first (rows, then columns), then flips, all from ``generator`` (default RNG when None), so
    a fixed generator state gives a fixed result. Works for any dtype; the result is a new contiguous tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"pad_crop_flip expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    padded_width = w + 2 * padding
    row_offset = _draw(2 * padding + 1, n, generator, x.device)
    col_offset = _draw(2 * padding + 1, n, generator, x.device)
    mirrored = _draw(2, n, generator, x.device).bool() & flip

    rows = row_offset[:, None] + torch.arange(h, device=x.device)
    col_steps = torch.arange(w, device=x.device)
    cols = col_offset[:, None] + torch.where(mirrored[:, None], col_steps.flip(0), col_steps)
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)

    padded = F.pad(x, (padding, padding, padding, padding))
    return padded.reshape(n, c, -1).gather(2, flat_index).view(n, c, h, w)


@dataclass(frozen=True)
class ImageTransform:
    """uint8 images ``(N, 3, H, W)`` to float32 network inputs.

    In training (``train=True``) and with ``augment``, applies ``pad_crop_flip``; with ``normalize``, subtracts
    ``mean`` and divides by ``std`` per channel (the engine moves the result to channels-last when configured).
    """

    augment: bool = True
    normalize: bool = False
    mean: Stats | None = None
    std: Stats | None = None
    padding: int = 4

    def __post_init__(self) -> None:
        if self.normalize and (self.mean is None or self.std is None):
            raise ValueError("ImageTransform(normalize=True) needs mean and std")

    def __call__(self, x_uint8: Tensor, generator: torch.Generator | None, train: bool) -> Tensor:
        """Transform a uint8 batch; ``generator`` drives the augmentation and is unused when not augmenting."""
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(
                f"ImageTransform expects a uint8 batch (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}"
            )
        if train and self.augment:
            x_uint8 = pad_crop_flip(x_uint8, self.padding, generator)
        x = x_uint8.to(torch.float32).div_(255.0)
        if self.normalize:
            x = x.sub_(per_channel(self.mean, x.device)).div_(per_channel(self.std, x.device))
        return x


@functools.cache
def per_channel(values: Stats, device: torch.device) -> Tensor:
    """``values`` as a float32 ``(1, C, 1, 1)`` tensor on ``device``, made once per device and reused: building it
    per batch would copy it from the host every step, and PyTorch's blocking host-to-GPU copy waits for the stream."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def cifar_transform(name: str, augment: bool = True, normalize: bool = False) -> ImageTransform:
    """The ``ImageTransform`` for ``name`` ("cifar10" or "cifar100") with that dataset's channel statistics."""
    if name not in CIFAR_STATS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(CIFAR_STATS)}")
    mean, std = CIFAR_STATS[name]
    return ImageTransform(augment=augment, normalize=normalize, mean=mean, std=std)
