"""The three formats of an export, each checked before the command ends.

- safetensors: the backbone's tensors under its library's keys (plus
  ``projection_head.*`` with ``--with-head``) and string metadata; the check
  runs the printed load line on the file and compares its features with the
  checkpoint's backbone, key by key and value by value.
- ONNX: the graph of torch.onnx's exporter (torch.export based) with a
  dynamic batch axis, run by ONNX Runtime on another batch size.
- TorchScript: torch.jit.trace, loaded back and run.

A file is written through atomic_write (selfsup.core.files): a failed
check, like a crash, leaves no part of it under its name and keeps what was
there.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from selfsup.core.checkpoint import EXPORT_FORMAT, EXPORT_HEAD_PREFIX
from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write
from selfsup.data.augment import IMAGENET_MEAN, IMAGENET_STD
from selfsup.export.library import Target, load_line
from selfsup.export.source import Source
from selfsup.models.exported import activation_name, load_exported_encoder

TOLERANCE = 1e-4  # largest difference allowed, relative to the largest feature
CHECK_BATCH = 3  # images of the check; ONNX and TorchScript are traced on 2, so the batch axis is exercised
ONNX_EXTRA = "export"  # pyproject.toml's optional dependencies for --format onnx


@dataclass
class Check:
    """What the check of a written file found: the largest absolute
    difference from the checkpoint's backbone over `images` images."""

    max_abs_diff: float
    relative: float
    images: int
    size: int


def metadata(source: Source, target: Target) -> dict[str, str]:
    """The file's string metadata: what the model is and where it came from."""
    head = source.head
    meta = {
        "format": EXPORT_FORMAT,
        "library": target.library,
        "model_name": target.model_name,
        "model_kwargs": json.dumps(target.kwargs, sort_keys=True),
        "model_setup": json.dumps(target.setup),
        "arch": source.arch,
        "feature_dim": str(source.feature_dim),
        "image_size": str(source.image_size),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "small_images": "true" if source.small_images else "false",
        "method": source.method,
        "epoch": "" if source.epoch is None else str(source.epoch),
        "source_file": os.path.basename(source.path),
        "source_sha256": source.sha256,
        "source_layout": source.layout,
        "head_slot": getattr(source.backbone, "head_name", "fc"),
        "head": "projection_head" if head is not None else "none",
    }
    if head is not None:
        meta["head_activation"] = activation_name(head)
        with torch.no_grad():
            meta["head_dim"] = str(int(head(torch.zeros(2, source.feature_dim)).shape[1]))
    return meta


def file_tensors(source: Source) -> dict[str, torch.Tensor]:
    """The backbone's state dict (own copies, contiguous: safetensors stores
    no shared or strided storage) and the head's under projection_head.*."""
    tensors = {k: v.detach().clone().contiguous() for k, v in source.backbone.state_dict().items()}
    if source.head is not None:
        tensors.update(
            {EXPORT_HEAD_PREFIX + k: v.detach().clone().contiguous() for k, v in source.head.state_dict().items()}
        )
    return tensors


def check_images(size: int, batch: int = CHECK_BATCH) -> torch.Tensor:
    """Fixed pseudo-random images (normalised pixels), the same on every run."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g)


def compare(reference: torch.Tensor, got: torch.Tensor, what: str, out: str) -> Check:
    """Check of `got` against `reference`; one line above TOLERANCE."""
    got = torch.as_tensor(got).float()
    if tuple(got.shape) != tuple(reference.shape):
        raise UserError(
            f"{what} '{out}' gives outputs of shape {tuple(got.shape)}, the checkpoint's backbone "
            f"{tuple(reference.shape)}; nothing was written"
        )
    diff = float((got - reference.float()).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if not diff <= TOLERANCE * scale:  # NaN fails too
        raise UserError(
            f"{what} '{out}' differs from the checkpoint's backbone: max abs difference {diff:.3g} "
            f"({diff / scale:.2g} of the largest feature, above {TOLERANCE:g}); nothing was written"
        )
    return Check(diff, diff / scale, int(reference.shape[0]), int(reference.shape[-1]) if reference.dim() > 3 else 0)


class WithHead(nn.Module):
    """(features, projection): the backbone's output and its head's, for the graph formats."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return features, self.head(features)


def graph_module(source: Source) -> nn.Module:
    return (WithHead(source.backbone, source.head) if source.head is not None else source.backbone).eval()


@torch.no_grad()
def reference_outputs(source: Source, images: torch.Tensor) -> list[torch.Tensor]:
    out = graph_module(source)(images)
    return list(out) if isinstance(out, tuple) else [out]


def _compare_all(refs: list[torch.Tensor], got: list[Any], what: str, out: str) -> Check:
    checks = [compare(r, g, what, out) for r, g in zip(refs, got)]
    worst = max(checks, key=lambda c: c.relative)
    return Check(worst.max_abs_diff, worst.relative, len(refs[0]), 0)


# -- safetensors ---------------------------------------------------------------


def check_load_line(line: str, source: Source, what: str, out: str) -> Check:
    """Run `line` (the printed load line, on the file it names) and compare
    the model it builds with the checkpoint's backbone: the same keys, none
    missing or unexpected, and the same features."""
    scope: dict[str, Any] = {}
    try:
        exec(line, scope)  # our own line: the exact code the user is told to run
    except Exception as exc:
        raise UserError(f"{what} '{out}' does not load with its own line ({type(exc).__name__}: {exc})") from None
    model = scope["model"].eval()
    expected = set(source.backbone.state_dict())
    loaded = set(model.state_dict())
    if loaded != expected:
        missing, unexpected = sorted(expected - loaded)[:3], sorted(loaded - expected)[:3]
        raise UserError(
            f"{what} '{out}': the library model has other keys than the file (not in the model: {missing}, "
            f"not in the file: {unexpected}); nothing was written"
        )
    images = check_images(source.image_size)
    with torch.no_grad():
        reference, got = source.backbone(images), model(images)
    return compare(reference, got, what, out)


def write_safetensors(source: Source, target: Target, out: str, meta: dict[str, str]) -> Check:
    """Write the file and check it with its load line. The check reads a copy
    under the same name in a temporary folder (timm tells a safetensors file
    by its suffix, which the partial file of atomic_write does not have)."""
    from safetensors.torch import save

    data = save(file_tensors(source), meta)
    with tempfile.TemporaryDirectory(prefix="selfsup-export-") as folder:
        staged = os.path.join(folder, os.path.basename(out))
        with open(staged, "wb") as f:
            f.write(data)
        check = check_load_line(load_line(target, staged, source.head is not None), source, "safetensors export", out)
        if source.head is not None:  # the head as --teacher reads it back (selfsup.models.exported)
            images = check_images(source.image_size)
            encoder = load_exported_encoder(staged, with_head=True)[0]
            compare(reference_outputs(source, images)[1], encoder(images), "safetensors export (head)", out)
    with atomic_write(out, what="export") as f:
        f.write(data)
    return check


# -- ONNX -----------------------------------------------------------------------


def require_onnx() -> None:
    """One line, before any work, when --format onnx cannot run here."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"--format onnx needs {', '.join(missing)}, not installed: pip install 'selfsup[{ONNX_EXTRA}]' "
            "(or pip install onnx onnxruntime onnxscript)"
        )


def _onnx_proto(module: nn.Module, example: torch.Tensor, outputs: list[str]):
    """torch.onnx's exporter (torch.export based; the TorchScript-based one as
    a fallback for a graph torch.export cannot take), batch axis dynamic."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=["images"],
                output_names=outputs,
                verbose=False,
            )
        return program.model_proto
    except Exception as first:
        import onnx

        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (example,),
                    buffer,
                    dynamo=False,
                    opset_version=17,
                    input_names=["images"],
                    output_names=outputs,
                    dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
                )
        except Exception:
            raise UserError(
                f"torch.onnx cannot export this model ({type(first).__name__}: {str(first).splitlines()[0]})"
            ) from None
        return onnx.load_from_string(buffer.getvalue())


def onnx_session(data: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def write_onnx(source: Source, out: str, meta: dict[str, str]) -> Check:
    outputs = ["features", "projection"] if source.head is not None else ["features"]
    module = graph_module(source)
    proto = _onnx_proto(module, check_images(source.image_size, 2), outputs)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    images = check_images(source.image_size)
    got = onnx_session(data).run(None, {"images": images.numpy()})
    check = _compare_all(reference_outputs(source, images), [torch.from_numpy(g) for g in got], "ONNX export", out)
    with atomic_write(out, what="export") as f:
        f.write(data)
    return check


# -- TorchScript ----------------------------------------------------------------

TORCHSCRIPT_METADATA = "selfsup.json"  # the extra file of the archive that holds the metadata


def write_torchscript(source: Source, out: str, meta: dict[str, str]) -> Check:
    module = graph_module(source)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants: checked below
        traced = torch.jit.trace(module, check_images(source.image_size, 2), check_trace=False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ calls torch.jit deprecated; it still runs
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta, sort_keys=True)})
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    images = check_images(source.image_size)
    with torch.no_grad():
        got = loaded(images)
    got = list(got) if isinstance(got, tuple) else [got]
    check = _compare_all(reference_outputs(source, images), got, "TorchScript export", out)
    with atomic_write(out, what="export") as f:
        f.write(data)
    return check


WRITERS: dict[str, Callable[..., Check]] = {
    "onnx": write_onnx,
    "torchscript": write_torchscript,
}
