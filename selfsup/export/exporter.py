"""One checkpoint in, one file out: :func:`export_checkpoint` (tools/export.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from selfsup.core.checkpoint import SAFETENSORS_SUFFIX
from selfsup.core.errors import UserError
from selfsup.core.files import refuse_overwriting
from selfsup.export import writers
from selfsup.export.library import Target, load_line, target_for
from selfsup.export.source import Source, read_source

FORMATS = ("safetensors", "onnx", "torchscript")
# The names each format's file takes (the first is the one we suggest). timm
# tells a safetensors file by its suffix, so that one is required.
SUFFIXES = {"safetensors": (SAFETENSORS_SUFFIX,), "onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}


@dataclass
class Export:
    """What export_checkpoint wrote and checked."""

    out: str
    format: str
    source: Source
    target: Target
    check: writers.Check
    load: str  # the one line that loads the file
    parameters: int
    size_bytes: int


def format_of(out: str, fmt: str | None) -> str:
    """--format, or the one --out's suffix names (safetensors when it names none)."""
    by_suffix = next((f for f, suffixes in SUFFIXES.items() if out.endswith(suffixes)), None)
    if fmt is None:
        fmt = by_suffix or "safetensors"
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "safetensors" and not out.endswith(SAFETENSORS_SUFFIX):
        raise UserError(
            f"--out '{out}': a safetensors export must end in {SAFETENSORS_SUFFIX} "
            "(timm and selfsup tell the format by it)"
        )
    if by_suffix is not None and by_suffix != fmt:
        raise UserError(
            f"--out '{out}' names a {by_suffix} file but --format is {fmt}: give --out a {SUFFIXES[fmt][0]} name"
        )
    return fmt


def check_output(out: str, checkpoint: str, force: bool = False) -> None:
    """One line, before any work, for an --out that cannot or must not be written."""
    if not out:
        raise UserError("--out FILE is required (e.g. --out student.safetensors)")
    if os.path.isdir(out):
        raise UserError(
            f"--out '{out}' is a folder: give the file's name (e.g. --out {os.path.join(out, 'student.safetensors')})"
        )
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError(f"--out '{out}': its folder '{folder}' does not exist")
    refuse_overwriting(out, [("the input checkpoint", checkpoint)], what="--out")
    if os.path.lexists(out):
        if not force:
            raise UserError(f"--out '{out}' exists: give another name, or add --force to replace it")
        if not os.path.isfile(out) or os.path.islink(out):
            raise UserError(f"--out '{out}' exists and is not a plain file: not replaced, even with --force")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out '{out}' cannot be written: no write permission in '{folder}'")


def use_line(fmt: str, target: Target, out: str, with_head: bool) -> str:
    """The one line that loads `out`: into timm/torchvision for safetensors,
    ONNX Runtime or torch.jit for the graph formats."""
    quoted = json.dumps(out)
    if fmt == "safetensors":
        return load_line(target, out, with_head)
    if fmt == "onnx":
        outputs = "features, projection = " if with_head else "features = "
        return (
            f"import onnxruntime; session = onnxruntime.InferenceSession({quoted}); "
            f"{outputs}session.run(None, {{'images': images}}){'' if with_head else '[0]'}"
            "  # images: float32 N x 3 x H x W, normalised"
        )
    return f"import torch; model = torch.jit.load({quoted})  # model(images): features" + (
        ", projection" if with_head else ""
    )


def check_image_size(source: Source) -> None:
    """One line when the backbone cannot take its export's image size."""
    try:
        source.features(writers.check_images(source.image_size, 1))
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(
            f"-a {source.arch} cannot run on {source.image_size} px images (--image-size): {text}"
        ) from None


def export_checkpoint(
    checkpoint: str,
    out: str,
    fmt: str | None = None,
    arch: str | None = None,
    with_head: bool = False,
    image_size: int | None = None,
    force: bool = False,
) -> Export:
    """Export the query backbone of `checkpoint` (any layout of
    selfsup.export.source) to `out` as safetensors, ONNX or TorchScript
    (`fmt` None: from `out`'s suffix), check the written file against the
    checkpoint's backbone, and return what was done. `with_head` keeps the
    projection head (a separate module in the file, a second graph output);
    `force` replaces an existing `out` (never the checkpoint itself)."""
    check_output(out, checkpoint, force)
    fmt = format_of(out, fmt)
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size}: expected a positive number of pixels")
    if fmt == "onnx":
        writers.require_onnx()
    source = read_source(checkpoint, arch, with_head, image_size)
    check_image_size(source)
    target = target_for(source.arch, source.backbone)
    meta = writers.metadata(source, target)
    try:
        with torch.no_grad():
            if fmt == "safetensors":
                check = writers.write_safetensors(source, target, out, meta)
            else:
                check = writers.WRITERS[fmt](source, out, meta)
    except OSError as exc:  # a full disk is a UserError already (atomic_write); this is the rest
        raise UserError(f"--out '{out}' cannot be written ({exc.strerror or exc}); nothing was written") from None
    check.size = source.image_size
    return Export(
        out=out,
        format=fmt,
        source=source,
        target=target,
        check=check,
        load=use_line(fmt, target, out, with_head),
        parameters=sum(p.numel() for p in source.backbone.parameters()),
        size_bytes=os.path.getsize(out),
    )


def summary(result: Export) -> list[str]:
    """The lines tools/export.py prints: what was read, written and checked, then the load line."""
    s, t, c = result.source, result.target, result.check
    stem = ", small-images stem" if s.small_images else ""
    epoch = f", epoch {s.epoch}" if s.epoch is not None else ""
    head = " + projection head" if s.head is not None else ""
    lines = [
        f"=> read '{s.path}': {s.layout}; -a {s.arch}, method {s.method}{epoch}{stem}",
        f"=> wrote '{result.out}' ({result.format}): {t.library} {t.model_name}{head}, "
        f"{s.feature_dim}-d features, {result.parameters / 1e6:.2f}M parameters, {result.size_bytes / 1e6:.1f} MB",
        f"=> checked: the written file, loaded as below, gives the checkpoint's features on {c.images} images of "
        f"{s.image_size} px (max abs difference {c.max_abs_diff:.2e}, {c.relative:.1e} relative; "
        f"limit {writers.TOLERANCE:g})",
        "=> load it with:",
        result.load,
    ]
    return lines
