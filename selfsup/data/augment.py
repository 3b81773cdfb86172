"""Image augmentations of MoCo v1/v2 and the evaluation transforms.

Sizes are parameters so the same recipes run at 224 px on ImageNet and at
32-64 px on the built-in dataset."""

from __future__ import annotations

import random
from typing import Callable

import torchvision.transforms as T
from PIL import ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize() -> T.Normalize:
    return T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


class PILGaussianBlur:
    """Gaussian blur with a radius drawn uniformly from `sigma` (PIL's blur,
    as MoCo-v2 uses; torchvision's tensor blur differs slightly in kernel size)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def blur_sigma(size: int = 224) -> tuple[float, float]:
    """MoCo-v2's blur radius range, 0.1-2 px at 224 px, scaled with the image
    size: the same blur relative to the object. At 224 px this is exactly the
    original's; at 32 px a fixed 2 px blur would erase small shapes (on the
    built-in data it made MoCo-v2 features worse than a random init)."""
    return (0.1 * size / 224, 2.0 * size / 224)


# MoCo's smallest crop, as a share of the image's area (--crop-min).
CROP_MIN = 0.2


def moco_v2_transform(size: int = 224, crop_min: float = CROP_MIN) -> T.Compose:
    """MoCo-v2 (`--aug-plus`): crop crop_min-1 of the area, jitter
    0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2, blur p=0.5 (sigma 0.1-2 at 224 px,
    see blur_sigma), flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(crop_min, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILGaussianBlur(blur_sigma(size))], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize(),
        ]
    )


def moco_v1_transform(size: int = 224, crop_min: float = CROP_MIN) -> T.Compose:
    """MoCo v1: crop crop_min-1, grayscale p=0.2, jitter 0.4 (always), flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(crop_min, 1.0)),
            T.RandomGrayscale(p=0.2),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize(),
        ]
    )


def pretrain_transform(aug_plus: bool, size: int = 224, crop_min: float = CROP_MIN) -> T.Compose:
    return moco_v2_transform(size, crop_min) if aug_plus else moco_v1_transform(size, crop_min)


class TwoCropsTransform:
    """Two independent augmentations of one image: a query and a key view."""

    def __init__(self, base_transform: Callable):
        self.base_transform = base_transform

    def __call__(self, x):
        return [self.base_transform(x), self.base_transform(x)]


def linear_train_transform(
    size: int = 224, interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR
) -> T.Compose:
    """Random resized crop + flip; torchvision's bilinear default as the ImageNet
    evaluations, bicubic for CIFAR (orig:DisCo/cifar_main_lincls.py:301)."""
    return T.Compose(
        [T.RandomResizedCrop(size, interpolation=interpolation), T.RandomHorizontalFlip(), T.ToTensor(), normalize()]
    )


def eval_transform(size: int = 224) -> T.Compose:
    """Resize to size*256/224 then centre-crop `size` (256 -> 224 at full scale)."""
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor(), normalize()])


def resize_transform(size: int = 224, interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC) -> T.Compose:
    """Resize the short side to `size`, centre-crop `size` (CIFAR evaluation:
    32 px up to 224 px, bicubic; orig:DisCo/cifar_main_lincls.py:310-312)."""
    return T.Compose([T.Resize(size, interpolation=interpolation), T.CenterCrop(size), T.ToTensor(), normalize()])
