"""Which library a backbone comes from, under which name, and the one line
that loads an export into it.

A timm backbone loads through timm's local-file route,
``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0)``
(timm 1.0's documented way to take weights from a file; ``num_classes=0``
leaves the classifier out, so the file needs none). A torchvision backbone
is its builder, the classifier slot set to Identity, and a strict
``load_state_dict`` of the file. A stem the zoo changed for small images
(``--small-images``) is rebuilt by statements on ``model`` in the same line,
and :func:`selfsup.export.writers.check_load_line` runs the line before the
export ends, so what is printed is what was checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from selfsup.core.checkpoint import EXPORT_HEAD_PREFIX
from selfsup.models import releases
from selfsup.models.backbones import SMALL_IMAGE_SIZE, TV_PREFIX, backbone_spec


@dataclass
class Target:
    """The model an export loads into: `library` ("timm", "torchvision", or
    "selfsup" for SwAV's ResNet-50x2, which neither library has) and its
    `model_name` there, the builder's `kwargs`, the `setup` statements run
    on ``model`` after it is built (stems), and its classifier slot."""

    library: str
    model_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    head_slot: str = "fc"
    reshapes: bool = False  # whether a setup statement changes a weight's shape (load after it)


def _python_path(dotted: str) -> str:
    """``classifier.3`` -> ``model.classifier[3]``: the attribute path as Python code."""
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in dotted.split("."))


def _resnet_stem_setup(model: nn.Module, prefix: str = "model") -> list[str]:
    """The zoo's small-images ResNet stem (selfsup.models.backbones._small_resnet_stem) as code."""
    width = model.conv1.out_channels
    return [
        f"{prefix}.conv1 = torch.nn.Conv2d(3, {width}, kernel_size=3, stride=1, padding=1, bias=False)",
        f"{prefix}.maxpool = torch.nn.Identity()",
    ]


def _has_small_resnet_stem(model: nn.Module) -> bool:
    conv1 = getattr(model, "conv1", None)
    return (
        isinstance(conv1, nn.Conv2d)
        and conv1.kernel_size == (3, 3)
        and conv1.stride == (1, 1)
        and isinstance(getattr(model, "maxpool", None), nn.Identity)
    )


def _timm_default(name: str, kwargs: dict) -> nn.Module | None:
    """timm's `name` as create_model builds it with `kwargs`, on the meta
    device (no weights, no arithmetic), to compare stems and patch sizes."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception:  # an init that reads values: no comparison, the load check decides
        return None


def _size(value: Any) -> int | None:
    if isinstance(value, (tuple, list)):
        return int(value[0]) if value else None
    return int(value) if isinstance(value, int) else None


def _timm_target(model: nn.Module, kwargs: dict) -> Target:
    name = model.pretrained_cfg.get("architecture") if getattr(model, "pretrained_cfg", None) else None
    if not name:
        raise ValueError("a timm model without its pretrained_cfg architecture name")
    kwargs = dict(kwargs)
    if getattr(model, "dynamic_img_size", False):
        kwargs["dynamic_img_size"] = True
    default = _timm_default(name, kwargs)
    embed, default_embed = getattr(model, "patch_embed", None), getattr(default, "patch_embed", None)
    if embed is not None and default_embed is not None:
        for key in ("img_size", "patch_size"):
            mine, theirs = _size(getattr(embed, key, None)), _size(getattr(default_embed, key, None))
            if mine is not None and theirs is not None and mine != theirs:
                kwargs[key] = mine
        if "patch_size" in kwargs or "img_size" in kwargs:  # the sizes may change other defaults: compare again
            default = _timm_default(name, kwargs)
    setup, reshapes = [], False
    stem, default_stem = getattr(model, "conv_stem", None), getattr(default, "conv_stem", None)
    if isinstance(stem, nn.Conv2d) and isinstance(default_stem, nn.Conv2d) and stem.stride != default_stem.stride:
        setup.append(f"model.conv_stem.stride = {tuple(stem.stride)}")
    if _has_small_resnet_stem(model) and not _has_small_resnet_stem(default):
        setup += _resnet_stem_setup(model)
        reshapes = True
    return Target("timm", name, kwargs, setup, "", reshapes)


def _torchvision_target(arch: str, model: nn.Module, head_slot: str) -> Target:
    if arch.startswith(TV_PREFIX):
        name = arch[len(TV_PREFIX) :]
    elif releases.is_release(arch):
        name = releases.RELEASES[arch].model
    else:  # the zoo's ResNets; SwAV, DeepCluster-v2 and SeLa-v2 are torchvision's ResNet-50
        name = "resnet50" if arch in ("SWAVresnet50", "DCresnet50", "SELAresnet50") else arch
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    if name.startswith("vit_") and getattr(model, "image_size", 224) == SMALL_IMAGE_SIZE:
        kwargs["image_size"] = SMALL_IMAGE_SIZE
    setup = _resnet_stem_setup(model) if _has_small_resnet_stem(model) else []
    stem = getattr(model, "conv_stem", None)
    if isinstance(stem, nn.Conv2d) and stem.stride == (1, 1):
        setup.append("model.conv_stem.stride = (1, 1)")
    setup.append(f"{_python_path(head_slot)} = torch.nn.Identity()")
    return Target("torchvision", name, kwargs, setup, head_slot, True)


def target_for(arch: str, model: nn.Module) -> Target:
    """The library model that `model` (a backbone of `arch`, head slot
    Identity, ``head_name`` set) is, with what rebuilds its stem."""
    head_slot = getattr(model, "head_name", "fc")
    if arch == "resnet50w2":
        return Target("selfsup", "resnet50w2", {}, [], head_slot, True)
    if releases.is_release(arch):
        release = releases.RELEASES[arch]
        if release.model == "resnet50":
            return _torchvision_target(arch, model, head_slot)
        target = _timm_target(model, release.kwargs)
        target.head_slot = head_slot
        return target
    if getattr(model, "pretrained_cfg", None) is not None:
        target = _timm_target(model, {})
        target.head_slot = head_slot
        return target
    spec = backbone_spec(arch)
    if spec.family in ("resnet", "torchvision"):
        return _torchvision_target(arch, model, head_slot)
    raise ValueError(f"no library target for arch {arch}")


def _kwargs_code(kwargs: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in kwargs.items())


def load_line(target: Target, path: str, with_head: bool = False) -> str:
    """One line of Python that builds `target`'s model and loads the export
    at `path` into it: ``model(images)`` then gives the exported features."""
    quoted = json.dumps(path)
    if with_head:  # the projection head is not the library model's: keep it out of the load
        tensors = (
            f"{{k: v for k, v in load_file({quoted}).items() if not k.startswith({json.dumps(EXPORT_HEAD_PREFIX)})}}"
        )
    else:
        tensors = f"load_file({quoted})"
    if target.library == "selfsup":
        return f"from selfsup.models.exported import load_exported; model = load_exported({quoted})"
    if target.library == "timm" and not target.reshapes and not with_head:
        build = (
            f"model = timm.create_model({json.dumps(target.model_name)}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={quoted}), num_classes=0{_kwargs_code(target.kwargs)})"
        )
        return "; ".join(["import timm", build, *target.setup])
    if target.library == "timm":
        build = (
            f"model = timm.create_model({json.dumps(target.model_name)}, num_classes=0{_kwargs_code(target.kwargs)})"
        )
        imports = "import timm, torch; from safetensors.torch import load_file"
    else:
        kwargs = _kwargs_code(target.kwargs).removeprefix(", ")
        builder = (
            f"torchvision.models.{target.model_name}({kwargs})"
            if re.fullmatch(r"[a-z_][a-z0-9_]*", target.model_name)
            else f"torchvision.models.get_model({json.dumps(target.model_name)}{_kwargs_code(target.kwargs)})"
        )
        build = f"model = {builder}"
        imports = "import torch, torchvision; from safetensors.torch import load_file"
    return "; ".join([imports, build, *target.setup, f"model.load_state_dict({tensors})"])
