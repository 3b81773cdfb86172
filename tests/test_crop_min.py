"""--crop-min: the smallest random crop of a pretraining view. Its default
is the original's, on both augmentation paths (PIL and --gpu-aug)."""

import torch
import torchvision.transforms as T
from moco_scripts import main_moco

from selfsup.data import augment
from selfsup.data import gpu_augment as G

# orig DisCo-pytorch moco/main_moco.py:283 and :296, DisCo/main.py:355 and
# :368: transforms.RandomResizedCrop(size, scale=(0.2, 1.)) for --aug-plus and
# for MoCo v1's augmentation alike.
ORIGINAL_SCALE = (0.2, 1.0)


def first_crop(transform):
    crop = transform.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop)
    return crop


def test_default_crop_is_the_originals_on_both_paths():
    args = main_moco.parse_args(["--aug-plus", "DATA"])
    assert args.crop_min == ORIGINAL_SCALE[0]
    for aug_plus in (True, False):
        assert first_crop(augment.pretrain_transform(aug_plus, 32, args.crop_min)).scale == ORIGINAL_SCALE
        assert G.moco_spec(aug_plus, 32, args.crop_min).scale == ORIGINAL_SCALE
    assert first_crop(augment.pretrain_transform(True, 32)).scale == ORIGINAL_SCALE


def test_crop_min_sets_the_smallest_crop_of_both_paths():
    for aug_plus in (True, False):
        assert first_crop(augment.pretrain_transform(aug_plus, 32, 0.8)).scale == (0.8, 1.0)
        spec = G.moco_spec(aug_plus, 32, 0.8)
        assert spec.scale == (0.8, 1.0)
        # The rest of the GPU recipe is the default one's.
        assert spec.jitter == G.moco_spec(aug_plus, 32).jitter and spec.blur_p == G.moco_spec(aug_plus, 32).blur_p
    boxes = G.sample_crop_boxes([40] * 500, [40] * 500, scale=(0.8, 1.0), generator=torch.Generator().manual_seed(0))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (40 * 40)
    # Rounding to whole pixels may shave a little off the drawn area.
    assert float(areas.min()) >= 0.75 and float(areas.mean()) > 0.85
    default = G.sample_crop_boxes([40] * 500, [40] * 500, generator=torch.Generator().manual_seed(0))
    assert float(((default[:, 2] - default[:, 0]) * (default[:, 3] - default[:, 1])).min()) / 1600 < 0.5
