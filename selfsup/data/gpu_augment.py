"""MoCo v1/v2 augmentation of a whole batch at once, on the GPU (or on CPU
tensors: the same code), with independent random parameters per view.

Split in two so the distribution can be tested without looking at pixels:
- `sample_params` draws every random choice on the CPU, per view, with the
  ranges and frequencies of selfsup.data.augment's torchvision/PIL recipe
  (RandomResizedCrop's 10-attempt rule and centre-crop fallback, ColorJitter
  factors and a random order of its four operations per view, grayscale,
  Gaussian blur sigma, flip);
- `apply` does the pixel work: every crop of the batch resized in one
  ``torchvision.ops.roi_align`` call (adaptive sampling averages several
  samples per output pixel when shrinking, i.e. an antialiased resize), the
  colour operations with kornia.enhance's per-sample functions (the
  torchvision/PIL definitions: brightness multiplies, contrast blends with the
  mean gray, saturation blends with the gray image, hue rotates in HSV),
  kornia's Gaussian blur with a sigma per view, flip and normalisation.

Differences from the CPU path: the CPU path quantises to uint8 after every
PIL operation and blurs with PIL's box-filter approximation of a Gaussian;
here everything stays float32 and the blur is a true Gaussian truncated at
3 sigma. The resize filters differ slightly (PIL bilinear with antialias vs
roi_align's averaged bilinear samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torchvision.ops

from selfsup.data.augment import CROP_MIN, IMAGENET_MEAN, IMAGENET_STD, blur_sigma

# kornia (a second or more to import) is imported inside the functions that
# draw pixels, so that the pretraining engine and jpeg.py can import this
# module at the top while a run without --gpu-aug never loads kornia.


@dataclass(frozen=True)
class AugmentSpec:
    size: int = 224
    scale: tuple = (0.2, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    gray_first: bool = False  # MoCo v1 converts to grayscale before the jitter
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    flip_p: float = 0.5


def moco_spec(aug_plus: bool, size: int = 224, crop_min: float = CROP_MIN) -> AugmentSpec:
    """The GPU twin of augment.pretrain_transform(aug_plus, size, crop_min)."""
    scale = (crop_min, 1.0)
    if aug_plus:
        return AugmentSpec(size=size, scale=scale, blur_sigma=blur_sigma(size))
    return AugmentSpec(size=size, scale=scale, jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_first=True, blur_p=0.0)


# -- random parameters (CPU) ---------------------------------------------------
def sample_crop_boxes(
    heights: Sequence[int] | torch.Tensor,
    widths: Sequence[int] | torch.Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomResizedCrop.get_params for n images at once: (n, 4) boxes
    (x0, y0, x1, y1) in pixels, x1/y1 exclusive.

    Per image: up to 10 attempts of area ~ U(scale) * H * W and log-ratio ~
    U(log ratio); the first that fits wins, with a uniform integer offset;
    if none fits, the centre crop with the ratio clamped into range."""
    H = torch.as_tensor(heights, dtype=torch.float64).view(-1, 1)
    W = torch.as_tensor(widths, dtype=torch.float64).view(-1, 1)
    n = H.shape[0]
    area = H * W * torch.empty(n, attempts, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, attempts, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    H, W = H.squeeze(1), W.squeeze(1)
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (H - h + 1)).clamp(max=H - h)
    left = torch.floor(u[:, 1] * (W - w + 1)).clamp(max=W - w)
    # Centre-crop fallback.
    in_ratio = W / H
    fw = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, top, torch.floor((H - h) / 2))
    left = torch.where(found, left, torch.floor((W - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1).float()


def _bernoulli(n, p, generator):
    return torch.rand(n, generator=generator) < p


def _uniform(n, low, high, generator):
    return torch.empty(n).uniform_(low, high, generator=generator)


def sample_params(
    spec: AugmentSpec,
    heights: int | Sequence[int],
    widths: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Every random choice for one view of each image (heights/widths: the
    image sizes, one entry per view to make). Returns a dict of CPU tensors.
    With an int `heights` (the number of views) and no widths, the crops are
    left out: they were made in the DataLoader workers."""
    n = heights if isinstance(heights, int) else len(heights)
    b, c, s, h = spec.jitter
    crops = (
        {}
        if widths is None
        else {"boxes": sample_crop_boxes(heights, widths, spec.scale, spec.ratio, generator=generator)}
    )
    return {
        **crops,
        "jitter": _bernoulli(n, spec.jitter_p, generator),
        "brightness": _uniform(n, max(0.0, 1 - b), 1 + b, generator),
        "contrast": _uniform(n, max(0.0, 1 - c), 1 + c, generator),
        "saturation": _uniform(n, max(0.0, 1 - s), 1 + s, generator),
        "hue": _uniform(n, -h, h, generator),
        "order": torch.argsort(torch.rand(n, 4, generator=generator), dim=1),  # a random permutation per view
        "gray": _bernoulli(n, spec.gray_p, generator),
        "blur": _bernoulli(n, spec.blur_p, generator),
        "sigma": _uniform(n, *spec.blur_sigma, generator),
        "flip": _bernoulli(n, spec.flip_p, generator),
    }


# -- pixel work (any device) --------------------------------------------------
def crop_resize(
    images: Sequence[torch.Tensor] | torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    views: int = 1,
    max_elements: int = 1 << 27,
) -> torch.Tensor:
    """Crop and resize to size x size: float32 in [0, 1], view-major.

    images: a list of n uint8 (3, H, W) tensors (or one uint8 batch); boxes:
    (views * n, 4), row v * n + k a box of images[k]. Images of different
    sizes are zero-padded into batches of at most `max_elements` values (each
    image once, whatever the number of views); the boxes stay inside their
    image, so the padding is never sampled."""
    if torch.is_tensor(images):
        images = list(images)
    n = len(images)
    device = images[0].device
    boxes = boxes.to(device=device, dtype=torch.float32, non_blocking=True).view(views, n, 4)
    out, start = [], 0
    while start < n:
        end, hmax, wmax = start, 0, 0
        while end < n:
            h2, w2 = max(hmax, images[end].shape[1]), max(wmax, images[end].shape[2])
            if end > start and (end - start + 1) * 3 * h2 * w2 > max_elements:
                break
            hmax, wmax, end = h2, w2, end + 1
        chunk = images[start:end]
        if all(tuple(im.shape[1:]) == (hmax, wmax) for im in chunk):
            batch = torch.stack(chunk).float()
        else:
            batch = torch.zeros(len(chunk), 3, hmax, wmax, device=device)
            for i, im in enumerate(chunk):
                batch[i, :, : im.shape[1], : im.shape[2]] = im
        index = torch.arange(len(chunk), device=device, dtype=torch.float32).view(1, -1, 1).expand(views, -1, 1)
        rois = torch.cat([index, boxes[:, start:end]], dim=2).reshape(-1, 5)
        # aligned=True: pixel k covers [k, k+1), so box (x0, x1) holds pixels x0..x1-1.
        crops = torchvision.ops.roi_align(batch, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        out.append(crops.view(views, len(chunk), 3, size, size))
        start = end
    return torch.cat(out, dim=1).reshape(views * n, 3, size, size).div_(255.0).clamp_(0.0, 1.0)


def _on(device, mask):
    """Indices where a CPU mask holds, on `device` (no GPU synchronisation)."""
    return mask.nonzero().squeeze(1).to(device, non_blocking=True)


def _gray(x):
    import kornia.color

    return kornia.color.rgb_to_grayscale(x).expand(-1, 3, -1, -1)


def color_jitter(x: torch.Tensor, params: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """kornia's per-sample colour operations in each view's own random order."""
    import kornia.enhance as E

    ops = [
        ("brightness", E.adjust_brightness_accumulative),
        ("contrast", E.adjust_contrast_with_mean_subtraction),
        ("saturation", E.adjust_saturation_with_gray_subtraction),
        ("hue", lambda img, f: E.adjust_hue(img, f * (2 * math.pi))),
    ]
    mask = params["jitter"] if mask is None else mask
    order = params["order"]
    for step in range(4):
        for op, (name, fn) in enumerate(ops):
            sel = mask & (order[:, step] == op)
            if not sel.any():
                continue
            idx = _on(x.device, sel)
            factor = params[name][sel].to(x.device, non_blocking=True)
            x[idx] = fn(x[idx], factor)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Gaussian blur with one sigma per image, truncated at 3 * sigma_max."""
    import kornia.filters

    radius = min(int(math.ceil(3 * sigma_max)), x.shape[-1] - 1, x.shape[-2] - 1)
    k = 2 * max(radius, 0) + 1
    if k == 1:
        return x
    sig = sigma.to(x.device, non_blocking=True).unsqueeze(1).expand(-1, 2)
    return kornia.filters.gaussian_blur2d(x, (k, k), sig, border_type="reflect")


def apply(
    images: Sequence[torch.Tensor] | torch.Tensor, params: dict[str, torch.Tensor], spec: AugmentSpec, views: int = 1
) -> torch.Tensor:
    """views * n normalised crops (view-major) of the n images; params row
    v * n + k describes view v of images[k]."""
    return colour_flip_normalise(crop_resize(images, params["boxes"], spec.size, views), params, spec)


def colour_flip_normalise(x: torch.Tensor, params: dict[str, torch.Tensor], spec: AugmentSpec) -> torch.Tensor:
    """The MoCo augmentation after the crop, in place on x: float (n, 3, S, S) in [0, 1]."""
    dev = x.device
    if spec.gray_first and params["gray"].any():
        idx = _on(dev, params["gray"])
        x[idx] = _gray(x[idx])
    if any(spec.jitter) and params["jitter"].any():
        x = color_jitter(x, params)
    if not spec.gray_first and params["gray"].any():
        idx = _on(dev, params["gray"])
        x[idx] = _gray(x[idx])
    if spec.blur_p > 0 and params["blur"].any():
        idx = _on(dev, params["blur"])
        x[idx] = gaussian_blur(x[idx], params["sigma"][params["blur"]], spec.blur_sigma[1])
    if params["flip"].any():
        idx = _on(dev, params["flip"])
        x[idx] = x[idx].flip(-1)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def crop_pair(img: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two random resized crops of one uint8 (3, H, W) image on the CPU, as
    uint8 (2, 3, size, size): the crop half of the pipeline, for workers."""
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    boxes = sample_crop_boxes([h, h], [w, w], spec.scale, spec.ratio, generator=generator).long().tolist()
    return torch.stack(
        [
            TF.resized_crop(img, y0, x0, y1 - y0, x1 - x0, [spec.size, spec.size], antialias=True)
            for x0, y0, x1, y1 in boxes
        ]
    )


class CroppedTwoViews:
    """The rest of the augmentation for uint8 crop pairs (n, 2, 3, S, S) made
    by crop_pair in the workers: returns [view_q, view_k]."""

    def __init__(self, spec: AugmentSpec, generator: torch.Generator | None = None):
        self.spec, self.generator = spec, generator

    def __call__(self, pairs):
        n = pairs.shape[0]
        x = pairs.transpose(0, 1).reshape(2 * n, *pairs.shape[2:]).float().div_(255.0)
        out = colour_flip_normalise(x, sample_params(self.spec, 2 * n, generator=self.generator), self.spec)
        return [out[:n], out[n:]]


class BatchTwoViews:
    """Two independently augmented views of every image of a batch: the
    batched twin of augment.TwoCropsTransform(augment.pretrain_transform())."""

    def __init__(self, spec: AugmentSpec, generator: torch.Generator | None = None):
        self.spec, self.generator = spec, generator

    def __call__(self, images):
        """images: list of uint8 (3, H, W) tensors (or a uint8 batch), one device."""
        images = list(images)
        n = len(images)
        heights = [im.shape[1] for im in images] * 2
        widths = [im.shape[2] for im in images] * 2
        params = sample_params(self.spec, heights, widths, generator=self.generator)
        out = apply(images, params, self.spec, views=2)
        return [out[:n], out[n:]]
