"""Batched pad-crop-flip and the uint8-to-float image transform."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from banets.data.augment import CIFAR_STATS, ImageTransform, cifar_transform, pad_crop_flip, per_channel


def distinct_pixels(n: int, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    """A float batch whose pixels are all different and non-zero, so every crop window is unique."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


def test_shape_dtype_and_layout_are_preserved():
    for dtype in (torch.float32, torch.float64, torch.uint8):
        x = torch.zeros(5, 3, 32, 32, dtype=dtype)
        out = pad_crop_flip(x, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()


def test_no_padding_and_no_flip_is_identity():
    x = torch.rand(16, 3, 32, 32)
    assert torch.equal(pad_crop_flip(x, padding=0, flip=False), x)


def test_each_image_is_its_own_window_of_the_padded_batch():
    padding, x = 4, distinct_pixels(64)
    out = pad_crop_flip(x, padding, torch.Generator().manual_seed(3))

    replay = torch.Generator().manual_seed(3)  # offsets: rows, then columns, then flips
    rows, cols, flips = (torch.randint(0, high, (64,), generator=replay) for high in (9, 9, 2))
    padded = F.pad(x, (padding,) * 4)
    for n in range(64):
        window = padded[n, :, rows[n] : rows[n] + 8, cols[n] : cols[n] + 8]
        assert torch.equal(out[n], window.flip(-1) if flips[n] else window)


def test_offsets_are_drawn_per_image_and_cover_every_shift():
    x = distinct_pixels(512, h=4, w=4)
    out = pad_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(1), flip=False)
    padded = F.pad(x, (2,) * 4)
    shifts = set()
    for n in range(512):
        matches = [
            (dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[n], padded[n, :, dy : dy + 4, dx : dx + 4])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) == 25


def test_about_half_of_the_images_are_mirrored():
    x = torch.arange(4, dtype=torch.float32).expand(4000, 1, 1, 4).contiguous()
    out = pad_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(2))
    mirrored = out[:, 0, 0, 0] == 3
    assert torch.equal(out[mirrored], x[mirrored].flip(-1)) and torch.equal(out[~mirrored], x[~mirrored])
    assert 0.45 < mirrored.float().mean().item() < 0.55


def test_fixed_seed_gives_a_fixed_result():
    x = torch.rand(32, 3, 32, 32)
    first = pad_crop_flip(x, generator=torch.Generator().manual_seed(7))
    again = pad_crop_flip(x, generator=torch.Generator().manual_seed(7))
    other = pad_crop_flip(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(0)
    assert pad_crop_flip(x).shape == x.shape  # the default generator works too


def test_rejects_non_batches_and_negative_padding():
    with pytest.raises(ValueError, match="N, C, H, W"):
        pad_crop_flip(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="padding"):
        pad_crop_flip(torch.zeros(1, 3, 32, 32), padding=-1)


def test_transform_scales_to_unit_range_without_augmenting_in_evaluation():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = cifar_transform("cifar10")(x, None, train=False)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)
    assert torch.equal(cifar_transform("cifar10", augment=False)(x, None, train=True), out)


def test_transform_augments_in_training_with_the_given_generator():
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    transform = cifar_transform("cifar10")
    out = transform(x, torch.Generator().manual_seed(5), train=True)
    expected = pad_crop_flip(x, 4, torch.Generator().manual_seed(5)).float() / 255
    assert torch.equal(out, expected) and not torch.equal(out, x.float() / 255)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_normalisation_uses_the_dataset_channel_statistics(name):
    mean, std = CIFAR_STATS[name]
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    out = cifar_transform(name, normalize=True)(x, None, train=False)
    for channel, value in enumerate((0.0, 0.2, 1.0)):
        assert torch.allclose(out[:, channel], torch.tensor((value - mean[channel]) / std[channel]))


def test_paper_default_does_not_normalise_and_cifar_stats_are_the_known_values():
    assert cifar_transform("cifar100").normalize is False
    assert CIFAR_STATS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert CIFAR_STATS["cifar100"] == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def test_transform_rejects_bad_inputs_and_configurations():
    with pytest.raises(ValueError, match="uint8"):
        cifar_transform("cifar10")(torch.rand(2, 3, 32, 32), None, train=False)
    with pytest.raises(ValueError, match="mean and std"):
        ImageTransform(normalize=True)
    with pytest.raises(ValueError, match="unknown dataset"):
        cifar_transform("mnist")


def test_normalisation_constants_are_made_once_per_device_and_results_unchanged():
    transform = cifar_transform("cifar10", normalize=True)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in CIFAR_STATS["cifar10"])
    per_channel.cache_clear()
    for seed in range(3):
        x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(transform(x, None, train=False), (x.float() / 255 - mean) / std)
    assert (per_channel.cache_info().misses, per_channel.cache_info().hits) == (2, 4)  # mean and std, built once
