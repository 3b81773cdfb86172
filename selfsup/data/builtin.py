"""The built-in dataset: ten procedurally drawn classes, made on the spot.

No package on the registry ships natural images under a licence and size that
suit a CPU demo, so the images are generated: each class is a shape or a
texture (below), drawn light on dark or dark on light, in near-grey tones with
a faint random tint, over smooth noise, at a random position, scale and
rotation. Every image depends only on (seed, split, class, index).

Why near-grey: contrastive learning tells images apart by whatever survives
its augmentations. Saturated random colours survive MoCo-v2's colour jitter
(hue moves by at most 0.1), carry no class information, and are the easiest
cue, so on a first, colourful version of this set MoCo-v2 learned colour and
its features fell below a random init's (kNN top-1 16% against 26%). With
the colours muted, what tells two images apart after jitter is geometry:
shape, texture, size, rotation, which is what the classes are made of.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle", "cross", "ring", "star", "hstripes", "checker", "dstripes", "dots"]
SUPERSAMPLE = 4


def _tones(rng):
    """(background, foreground) RGB: one dark and one light grey level, in
    either order, each with a faint tint of its own."""
    dark, light = rng.uniform(10, 90), rng.uniform(170, 250)
    if rng.random() < 0.5:
        dark, light = light, dark
    tint = lambda: 1 + rng.uniform(-0.15, 0.15, size=3)  # noqa: E731
    return np.clip(dark * tint(), 0, 255), np.clip(light * tint(), 0, 255)


def _background(rng, size, tone):
    """A flat tone plus smooth noise: clutter with no class signal."""
    noise = rng.normal(0, 1, size=(size // 8 + 1, size // 8 + 1))
    noise = np.array(Image.fromarray(noise.astype(np.float32)).resize((size, size), Image.BICUBIC))
    return np.clip(tone[None, None] + 12 * noise[..., None], 0, 255)


def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        radius = inner if (inner and i % 2) else r
        a = rot + i * math.pi / (n if inner else n / 2)
        pts.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return pts


def _draw_shape(name, draw, rng, size, colour):
    s = size
    r = rng.uniform(0.28, 0.42) * s
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
    rot = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(v) for v in colour)
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rot), fill=fill)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fill)
    elif name == "cross":
        w = r * 0.35
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon(
                [
                    (cx - dx * r + px, cy - dy * r + py),
                    (cx + dx * r + px, cy + dy * r + py),
                    (cx + dx * r - px, cy + dy * r - py),
                    (cx - dx * r - px, cy - dy * r - py),
                ],
                fill=fill,
            )
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(r * 0.3)))
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.42), fill=fill)
    else:
        return False
    return True


def _texture(name, rng, size, colour, base):
    """Full-image textures: returns a float RGB array."""
    period = rng.uniform(0.12, 0.22) * size
    phase = rng.uniform(0, period)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if name == "hstripes":
        rot = rng.uniform(-0.25, 0.25)  # near-horizontal
        u = -math.sin(rot) * xx + math.cos(rot) * yy
        mask = ((u + phase) % period) < period / 2
    elif name == "dstripes":
        rot = rng.choice([math.pi / 4, -math.pi / 4]) + rng.uniform(-0.2, 0.2)
        u = -math.sin(rot) * xx + math.cos(rot) * yy
        mask = ((u + phase) % period) < period / 2
    elif name == "checker":
        rot = rng.uniform(0, math.pi / 2)
        u = math.cos(rot) * xx + math.sin(rot) * yy
        v = -math.sin(rot) * xx + math.cos(rot) * yy
        mask = (np.floor((u + phase) / period) + np.floor((v + phase) / period)) % 2 == 0
    elif name == "dots":
        gap = period * 1.3
        u, v = (xx + phase) % gap - gap / 2, (yy + phase) % gap - gap / 2
        mask = u**2 + v**2 < (gap * 0.28) ** 2
    else:
        raise ValueError(name)
    out = base.copy()
    out[mask] = colour
    return out


def make_image(label: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """One image of class `label` as a PIL RGB image of `size` x `size`."""
    big = size * SUPERSAMPLE
    back, colour = _tones(rng)
    bg = _background(rng, big, back)
    name = CLASSES[label]
    if name in ("hstripes", "dstripes", "checker", "dots"):
        arr = _texture(name, rng, big, colour, bg)
        img = Image.fromarray(arr.astype(np.uint8))
    else:
        img = Image.fromarray(bg.astype(np.uint8))
        _draw_shape(name, ImageDraw.Draw(img), rng, big, colour)
    img = img.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return img


def prepare(
    root: str | os.PathLike,
    train_per_class: int = 300,
    val_per_class: int = 100,
    size: int = 40,
    seed: int = 0,
    force: bool = False,
) -> int:
    """Write `root`/train and `root`/val as ImageFolder trees of PNG files.

    Skips the work when the tree is already complete (same counts), unless
    `force`. Returns the number of images written."""
    marker = os.path.join(root, ".complete")
    stamp = f"v2 {train_per_class} {val_per_class} {size} {seed}"
    if not force and os.path.isfile(marker) and open(marker).read() == stamp:
        return 0
    written = 0
    for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for label, name in enumerate(CLASSES):
            folder = os.path.join(root, split, f"{label}_{name}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, label, i])
                make_image(label, rng, size).save(os.path.join(folder, f"{i:05d}.png"))
                written += 1
    with open(marker, "w") as f:
        f.write(stamp)
    return written
