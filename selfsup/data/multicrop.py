"""SwAV's multi-crop augmentation: for each resolution i, ``nmb_crops[i]``
random resized crops of ``size_crops[i]`` px with scale in
``[min_scale_crops[i], max_scale_crops[i]]``, each followed by a flip,
colour distortion (jitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2) and a
Gaussian blur (radius 0.1-2, p=0.5). Crops come out grouped by resolution
(all large crops first), as the model batches equal sizes together."""

from __future__ import annotations

from typing import Sequence

import torchvision.transforms as T

from selfsup.core.errors import UserError
from selfsup.data.augment import PILGaussianBlur

SWAV_MEAN = (0.485, 0.456, 0.406)
SWAV_STD = (0.228, 0.224, 0.225)


def color_distortion(s: float = 1.0) -> T.Compose:
    return T.Compose(
        [T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8), T.RandomGrayscale(p=0.2)]
    )


def check_multicrop_args(
    size_crops: Sequence[int],
    nmb_crops: Sequence[int],
    min_scale_crops: Sequence[float],
    max_scale_crops: Sequence[float],
) -> None:
    lengths = {len(size_crops), len(nmb_crops), len(min_scale_crops), len(max_scale_crops)}
    if len(lengths) != 1:
        raise UserError(
            f"--size_crops {size_crops}, --nmb_crops {nmb_crops}, --min_scale_crops "
            f"{min_scale_crops} and --max_scale_crops {max_scale_crops} need one value per resolution"
        )
    if any(n < 0 for n in nmb_crops) or sum(nmb_crops) < 2:
        raise UserError(f"--nmb_crops {nmb_crops}: SwAV needs at least two crops per image")
    for lo, hi in zip(min_scale_crops, max_scale_crops):
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop scales {lo}-{hi}: expected 0 < --min_scale_crops <= --max_scale_crops <= 1")
    if any(s < 1 for s in size_crops):
        raise UserError(f"--size_crops {size_crops}: expected positive sizes")


class MultiCropTransform:
    def __init__(
        self,
        size_crops: Sequence[int],
        nmb_crops: Sequence[int],
        min_scale_crops: Sequence[float],
        max_scale_crops: Sequence[float],
    ):
        check_multicrop_args(size_crops, nmb_crops, min_scale_crops, max_scale_crops)
        tail = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                color_distortion(),
                T.RandomApply([PILGaussianBlur()], p=0.5),
                T.ToTensor(),
                T.Normalize(mean=SWAV_MEAN, std=SWAV_STD),
            ]
        )
        self.transforms = []
        for size, n, lo, hi in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
            crop = T.Compose([T.RandomResizedCrop(size, scale=(lo, hi)), tail])
            self.transforms += [crop] * n

    def __call__(self, img):
        return [t(img) for t in self.transforms]
