"""ImageFolder datasets with checks that turn bad input into one-line errors."""
import os

from PIL import Image, UnidentifiedImageError
import torch
from torchvision import datasets

from .errors import UserError


def pil_loader(path):
    """Open an image as RGB; an unreadable file is a UserError naming it."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"unreadable image '{path}': {exc}") from None


def check_image_folder(root, what="data folder"):
    """Raise UserError unless `root` is a folder of class folders holding images."""
    if not os.path.isdir(root):
        raise UserError(f"{what} '{root}' does not exist (expected a folder of class sub-folders with images)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserError(f"{what} '{root}' has no class sub-folders (expected ImageFolder layout: {root}/<class>/<image>)")
    for c in classes:
        folder = os.path.join(root, c)
        if not any(datasets.folder.has_file_allowed_extension(f, datasets.folder.IMG_EXTENSIONS)
                   for f in os.listdir(folder)):
            raise UserError(f"class folder '{folder}' holds no images (expected files ending in "
                            f"{', '.join(datasets.folder.IMG_EXTENSIONS[:4])}, ...)")


def image_folder(root, transform, what="data folder"):
    check_image_folder(root, what)
    return datasets.ImageFolder(root, transform=transform, loader=pil_loader)


def split_folder(data, split):
    """`data`/`split` for the positional data argument (train/ or val/)."""
    if not os.path.isdir(data):
        raise UserError(f"data folder '{data}' does not exist (expected a folder holding train/ and val/)")
    return os.path.join(data, split)


def make_loader(dataset, batch_size, workers, shuffle, drop_last, distributed, seed=None, collate_fn=None):
    """DataLoader with a DistributedSampler when several processes run."""
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed or 0)
    if len(dataset) < batch_size and drop_last:
        raise UserError(f"batch size {batch_size} per process is larger than the {len(dataset)} images of "
                        f"'{getattr(dataset, 'root', 'the dataset')}' (lower -b/--batch-size)")
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=(shuffle and sampler is None), sampler=sampler,
        num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
        persistent_workers=workers > 0, collate_fn=collate_fn)
