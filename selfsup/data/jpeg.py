"""The data side of --gpu-aug: DataLoader workers only read files; JPEGs are
decoded on the GPU (nvjpeg through torchvision.io.decode_jpeg), in one batch;
both MoCo views are made from the decoded batch by selfsup.data.gpu_augment.

Any image folder works: a file that is not a JPEG (the built-in data is PNG)
is decoded to uint8 pixels in the worker instead (torchvision.io, else PIL).
Without a GPU the same code decodes the JPEGs on the CPU in the main process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from selfsup.core.errors import UserError
from selfsup.data import folders as D
from selfsup.data.gpu_augment import BatchTwoViews, CroppedTwoViews, crop_pair
from selfsup.data.scan import ScannedImageFolder, open_regular_file

JPEG_MAGIC = b"\xff\xd8\xff"


def read_encoded(path: str) -> tuple[str, str, torch.Tensor]:
    """(path, kind, tensor): kind 'jpeg' with the file's bytes, or 'pixels'
    with a decoded uint8 (3, H, W) tensor for other formats."""
    try:
        with open_regular_file(path) as f:  # a FIFO is refused, not waited on
            raw = f.read()
    except OSError as exc:
        raise UserError(f"unreadable image '{path}': {exc}") from None
    if not raw:
        raise UserError(f"unreadable image '{path}': empty file")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if raw[:3] == JPEG_MAGIC:
        return (path, "jpeg", data)
    return (path, "pixels", _decode_on_cpu(path, data))


def _decode_on_cpu(path, data):
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        pass
    img = D.pil_loader(path)  # BMP, TIFF, CMYK JPEGs...; a UserError when PIL cannot read it either
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class EncodedImageFolder(ScannedImageFolder):
    """ImageFolder whose samples are read_encoded() triples, untransformed."""

    def __init__(self, root: str, what: str = "data folder") -> None:
        super().__init__(root, loader=read_encoded, what=what)


def collate_encoded(batch: list) -> tuple[list, torch.Tensor]:
    """Keep the variable-size payloads as a list; stack the targets."""
    return [item for item, _ in batch], torch.tensor([t for _, t in batch], dtype=torch.long)


def decode_batch(payloads: list, device: torch.device | str) -> list[torch.Tensor]:
    """uint8 (3, H, W) tensors on `device`, one per payload, in order. JPEGs
    are decoded together (on the GPU when `device` is one); a batch the GPU
    decoder refuses is decoded image by image on the CPU."""
    device = torch.device(device)
    out = [None] * len(payloads)
    jpegs = [i for i, (_, kind, _) in enumerate(payloads) if kind == "jpeg"]
    if jpegs and device.type == "cuda":
        try:
            decoded = decode_jpeg([payloads[i][2] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, im in zip(jpegs, decoded):
                out[i] = im
            jpegs = []
        except RuntimeError:
            pass  # e.g. a CMYK or progressive-arithmetic JPEG: the CPU path below names the bad file
    for i in jpegs:
        path, _, data = payloads[i]
        try:
            im = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            im = _decode_on_cpu(path, data)
        out[i] = im.to(device, non_blocking=True)
    for i, (_, kind, data) in enumerate(payloads):
        if kind == "pixels":
            out[i] = data.to(device, non_blocking=True)
    return out


class TwoViewLoader:
    """Wraps a DataLoader of EncodedImageFolder batches: yields ([view_q,
    view_k], target) on `device`, decoded and augmented there."""

    def __init__(self, loader: D.ResumableLoader, augment: Callable, device: torch.device | str) -> None:
        self.loader, self.augment, self.device = loader, augment, torch.device(device)

    def __len__(self):
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def sampler(self) -> D.ResumableBatchSampler:
        return self.loader.sampler

    # Iteration boundaries, mid-epoch positions and resume points are the
    # inner ResumableLoader's: it calls `hook` after batch i is trained and
    # before batch i+1 is read, so a checkpoint taken there holds the RNG
    # states from before batch i+1 is augmented here, and a rerun repeats it.
    @property
    def hook(self) -> Callable[[int, int], None] | None:
        return self.loader.hook

    @hook.setter
    def hook(self, fn: Callable[[int, int], None] | None) -> None:
        self.loader.hook = fn

    @property
    def start(self) -> int:
        return self.loader.start

    def resume_at(self, state: dict) -> None:
        self.loader.resume_at(state)

    def position(self, batches_done: int) -> dict:
        return self.loader.position(batches_done)

    def __iter__(self):
        for payloads, target in self.loader:
            images = decode_batch(payloads, self.device)
            yield self.augment(images), target


def decode_on_cpu(path: str) -> torch.Tensor:
    """uint8 (3, H, W) of any image file, JPEGs with libjpeg-turbo."""
    path_, kind, data = read_encoded(path)
    if kind == "pixels":
        return data
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        return _decode_on_cpu(path, data)


class CropPairReader:
    """DataLoader loader for --gpu-aug-decode workers: decode on the CPU and
    make the two random resized crops there (uint8 (2, 3, S, S))."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, path):
        return crop_pair(decode_on_cpu(path), self.spec)


class CroppedPairLoader(TwoViewLoader):
    def __iter__(self):
        for pairs, target in self.loader:
            yield self.augment(pairs.to(self.device, non_blocking=True)), target


def two_view_loader(
    root: str,
    spec: Any,
    batch_size: int,
    workers: int,
    device: torch.device | str,
    distributed: bool = False,
    seed: int | None = None,
    decode: str = "gpu",
) -> TwoViewLoader:
    """The --gpu-aug pretraining loader of `root` (an ImageFolder).

    decode 'gpu': workers read bytes, JPEGs are decoded and cropped on
    `device`; 'workers': workers decode and crop (uint8 crops travel), the
    colour/blur/flip/normalise run batched on `device`."""
    if decode not in ("gpu", "workers"):
        raise UserError(f"--gpu-aug-decode {decode}: expected gpu or workers")
    if decode == "workers":
        dataset = ScannedImageFolder(root, loader=CropPairReader(spec))
        loader = D.make_loader(
            dataset, batch_size, workers, shuffle=True, drop_last=True, distributed=distributed, seed=seed
        )
        return CroppedPairLoader(loader, CroppedTwoViews(spec), device)
    dataset = EncodedImageFolder(root)
    loader = D.make_loader(
        dataset,
        batch_size,
        workers,
        shuffle=True,
        drop_last=True,
        distributed=distributed,
        seed=seed,
        collate_fn=collate_encoded,
    )
    return TwoViewLoader(loader, BatchTwoViews(spec), device)
