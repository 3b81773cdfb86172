"""Convert a MoCo / DisCo / linear-eval ResNet checkpoint to a detectron2 pickle.

Input layouts accepted (all ``torch.save`` files):

* pretraining checkpoint (main_moco.py, DisCo main.py): ``{"state_dict":
  {"module.encoder_q.<torchvision resnet name>": ...}, "arch": ...}``; the
  key encoder, queue and teacher (``module.encoder_k.*``, ``module.queue*``,
  ``module.teacher.*``) are ignored;
* linear-eval checkpoint: ``{"state_dict": {"module.<resnet name>": ...}}``;
* a plain torchvision-style ResNet state dict (optionally under
  ``state_dict`` / ``model``, optionally with a ``module.`` prefix).

The ``fc`` part (projection head or classifier) is always dropped. Names are
mapped to detectron2's ResNet (``stem.conv1``, ``stem.conv1.norm``,
``resN.M.convK[.norm]``, ``resN.M.shortcut[.norm]``) and pickled as
``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": True}``
so detectron2 matches ``res5.*`` to the ROI head of the R-C4 model.

In R-C4 the res5 stage is part of the ROI head and detectron2 always builds it
from bottleneck blocks. A ResNet-18/34 ``layer4`` (basic blocks) cannot fill
it: some of its tensors even have the same shapes as bottleneck tensors and
would load into the wrong slots, so it is dropped and res5 starts from
detectron2's initialisation. For ResNet-50/101/152 every stage transfers.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from selfsup.core.checkpoint import load_file
from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write, refuse_overwriting

# blocks per stage (layer1..layer4) -> depth, for the two block types
_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
RESNET_ARCHS = {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
_IGNORED_PREFIXES = ("encoder_k.", "teacher.", "queue", "queue_ptr", "predictor.", "projector.")
_KEY_RE = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|layer[1-4]\.\d+\.(conv[1-3]\.weight"
    r"|bn[1-3]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|downsample\.0\.weight"
    r"|downsample\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)))$"
)


@dataclass
class Conversion:
    """The result of :func:`convert_state_dict`."""

    model: dict  # detectron2 name -> numpy array
    arch: str  # resnet18 ... resnet152
    block: str  # "basic" or "bottleneck"
    source: str  # which input layout was recognised
    stages: list  # detectron2 stages kept, e.g. ["stem", "res2", ...]
    dropped: dict = field(default_factory=dict)  # reason -> number of tensors

    @property
    def depth(self) -> int:
        return int(self.arch[len("resnet") :])

    def overrides(self) -> str:
        """The config overrides this backbone needs in the R-C4 configs."""
        if self.block == "basic":
            return f"MODEL.RESNETS.DEPTH {self.depth} MODEL.RESNETS.RES2_OUT_CHANNELS 64"
        return f"MODEL.RESNETS.DEPTH {self.depth}"

    def report(self) -> str:
        lines = [
            f"converted {self.arch} ({self.block} blocks, from {self.source}): "
            f"{len(self.model)} tensors kept for {', '.join(self.stages)}"
        ]
        for reason, n in self.dropped.items():
            lines.append(f"  dropped {n} tensors: {reason}")
        if self.block == "basic":
            lines.append(
                "  note: in R-C4 res5 is the ROI head and is built of bottleneck "
                "blocks, so res5 starts fresh for this backbone"
            )
        lines.append(f"  train with: {self.overrides()}")
        return "\n".join(lines)


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_backbone(obj: Any, where: str = "checkpoint") -> tuple[str | None, str, dict[str, torch.Tensor], int]:
    """From a loaded checkpoint object, return (arch or None, source, {torchvision
    resnet name: tensor} including fc.*, number of ignored tensors)."""
    if not isinstance(obj, dict):
        raise UserError(
            f"{where}: expected a dict saved by torch.save (a checkpoint or state dict), got {type(obj).__name__}"
        )
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    sd = None
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            sd = obj[key]
            break
    if sd is None:
        sd = obj
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise UserError(f"{where}: no tensors found; expected a checkpoint with 'state_dict' or a ResNet state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if any(k.startswith("encoder_q.") for k in sd):
        source = "pretraining checkpoint (encoder_q)"
        picked = {k[len("encoder_q.") :]: v for k, v in sd.items() if k.startswith("encoder_q.")}
    else:
        source = "linear-eval checkpoint" if "state_dict" in obj else "plain state dict"
        picked = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
    ignored = len(sd) - len(picked)
    return arch, source, picked, ignored


def _infer_layout(sd, arch, where):
    if arch is not None and arch not in RESNET_ARCHS:
        raise UserError(
            f"{where}: arch '{arch}' is not a ResNet; detection transfer uses detectron2's "
            f"R-C4 Faster R-CNN, which needs a ResNet (resnet18/34/50/101/152) backbone"
        )
    if "conv1.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        sample = ", ".join(sorted(sd)[:3])
        raise UserError(
            f"{where}: not a torchvision ResNet (no conv1.weight / layer1.0.conv1.weight; "
            f"keys start {sample}); detection transfer supports ResNet backbones only, "
            f"e.g. EfficientNet or MobileNet students cannot go into the R-C4 config"
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    counts = []
    for layer in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(f"layer{layer}.")}
        counts.append(len(idx))
    depth = _DEPTHS.get((block, tuple(counts)))
    if depth is None:
        raise UserError(f"{where}: ResNet with {block} blocks {counts} per stage is not one of resnet18/34/50/101/152")
    found = f"resnet{depth}"
    if arch is not None and arch != found:
        raise UserError(f"{where}: 'arch' says {arch} but the weights are a {found}")
    width = sd["conv1.weight"].shape[0]
    if width != 64:
        raise UserError(
            f"{where}: stem has {width} channels, expected 64 (standard torchvision "
            f"ResNet widths are required by detectron2's ResNet)"
        )
    return found, block


def rename_key(k: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name."""
    if not k.startswith("layer"):
        k = "stem." + k
    k = re.sub(r"^layer([1-4])\.", lambda m: f"res{int(m.group(1)) + 1}.", k)
    k = re.sub(r"\.bn([1-3])\.", r".conv\1.norm.", k)
    k = k.replace("stem.bn1.", "stem.conv1.norm.")
    k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return k


def convert_state_dict(obj: Any, where: str = "checkpoint") -> Conversion:
    """Convert a loaded checkpoint object; returns a :class:`Conversion`."""
    arch, source, sd, ignored = extract_backbone(obj, where)
    arch, block = _infer_layout(sd, arch, where)
    dropped = {}
    if ignored:
        dropped["key encoder / queue / teacher (not the student backbone)"] = ignored
    head = [k for k in sd if k.startswith("fc.")]
    if head:
        dropped["fc (projection head or classifier)"] = len(head)
    other = [k for k in sd if not k.startswith("fc.") and not _KEY_RE.match(k)]
    if other:
        raise UserError(f"{where}: unexpected keys for a torchvision {arch}: {', '.join(sorted(other)[:5])}")
    keep_res5 = block == "bottleneck"
    if not keep_res5:
        n = sum(1 for k in sd if k.startswith("layer4."))
        dropped["layer4 -> res5: R-C4 builds res5 of bottleneck blocks in the ROI head"] = n
    model = {}
    for k, v in sd.items():
        if k.startswith("fc.") or (not keep_res5 and k.startswith("layer4.")):
            continue
        model[rename_key(k)] = v.detach().cpu().numpy()
    stages = ["stem", "res2", "res3", "res4"] + (["res5"] if keep_res5 else [])
    return Conversion(model=model, arch=arch, block=block, source=source, stages=stages, dropped=dropped)


def load_checkpoint(path: str) -> Any:
    """The checkpoint, read with the project's one loader: weights_only=True
    with its allow-list, or as is under --unsafe-load (selfsup.core.checkpoint)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint file not found")
    return load_file(path, "input checkpoint")


def save_pickle(conv: Conversion, out_path: str) -> None:
    """Write the detectron2 pickle whole or not at all (selfsup.core.files.atomic_write)."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if os.path.isdir(out_path):
        raise UserError(f"{out_path}: is a folder; give the pickle's file name (e.g. ./output.pkl)")
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_path}: output folder {out_dir} does not exist")
    data = {"model": conv.model, "__author__": "DisCo-pytorch selfsup.detection", "matching_heuristics": True}
    with atomic_write(out_path, what="detectron2 pickle") as f:
        pickle.dump(data, f)


def convert_file(in_path: str, out_path: str) -> Conversion:
    """Checkpoint file -> detectron2 pickle; returns the :class:`Conversion`.
    An output that is the input (`X X`, or through a link) is refused."""
    refuse_overwriting(out_path, [("the input checkpoint", in_path)])
    conv = convert_state_dict(load_checkpoint(in_path), where=in_path)
    save_pickle(conv, out_path)
    return conv
