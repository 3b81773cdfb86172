"""What a checkpoint holds for an export: its query backbone and, on request,
its projection head, with the facts the export records.

Every layout the project writes or reads is taken here: MoCo-v2, DisCo and
MoCo+RKD pretraining (``module.encoder_q.*``; the key encoder, queue and
teacher are left behind, ``module.teacher.*`` as ``module.teacher_encoder_q.*``
of the original DisCo students), SwAV and SwAV+DisCo (the official flat
layout, also the SwAV, DeepCluster-v2 and SeLa-v2 releases), linear and
semi-supervised evaluation (``module.*`` with the classifier, which is
dropped), the DINO, MoCo-v3 and DINOv2 releases (selfsup.models.releases)
and the files tools/export.py itself writes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models import releases
from selfsup.models.backbones import backbone_spec, canonical_arch, create_backbone, default_image_size, set_head
from selfsup.models.exported import head_module, load_exported_encoder
from selfsup.models.swav import HEAD_PREFIXES as SWAV_HEAD_PREFIXES
from selfsup.models.swav import SwAVModel, load_official_state


@dataclass
class Source:
    """A checkpoint's backbone (eval mode, head slot Identity) and head."""

    path: str
    arch: str  # our name: the zoo's, a timm name, tv:NAME, or a release (dino_vits16, ...)
    backbone: nn.Module
    head: nn.Module | None  # the projection head, when asked for
    method: str  # moco, disco, moco_rkd, swav, swav_disco, lincls, semi, dino, mocov3, dinov2, ...
    layout: str  # how the file was read, for messages
    epoch: int | None
    small_images: bool
    image_size: int
    sha256: str

    @functools.cached_property
    def feature_dim(self) -> int:
        return int(self.features(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1])

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_keys(state: dict, n: int = 3) -> str:
    keys = list(state)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "") if keys else "none"


def _has_prefix(state: dict, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in state)


# -- which layout, which arch ----------------------------------------------------


def _family(ckpt: Any, state: dict | None, arch: str | None) -> str:
    """ "export", "dino", "mocov3", "release", "moco", "swav" or "plain"."""
    if isinstance(ckpt, dict) and "exported" in ckpt:
        return "export"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("teacher"), dict):
        return "dino"
    if state is not None and _has_prefix(state, "module.base_encoder.", "base_encoder."):
        return "mocov3"
    if arch is not None and releases.is_release(arch):
        return "release"
    if state is not None and _has_prefix(state, "module.encoder_q.", "encoder_q."):
        return "moco"
    flat = ck.strip_prefix(state, "module.") if state and _has_prefix(state, "module.") else (state or {})
    if _has_prefix(flat, *SWAV_HEAD_PREFIXES) or (arch is not None and arch in SWAV_ARCHS):
        return "swav"
    return "plain"


SWAV_ARCHS = ("SWAVresnet50", "resnet50w2", "DCresnet50", "SELAresnet50")
_MOCOV3_ARCHS = {"vit_small": "mocov3_vit_small", "resnet50": "mocov3_resnet50"}
_DINO_ARCHS = {
    ("vit_small", 16): "dino_vits16",
    ("vit_small", 8): "dino_vits8",
    ("xcit_small_12_p16", 16): "dino_xcit_small_12_p16",
    ("resnet50", 16): "dino_resnet50",
}


def _release_arch(family: str, ckpt: Any, arch: str | None, path: str) -> str:
    """The release name (-a, else what the file says) of a DINO or MoCo-v3 training checkpoint."""
    names = sorted(n for n, r in releases.RELEASES.items() if r.family == family)
    if arch is not None:
        if arch not in names:
            raise UserError(
                f"checkpoint '{path}' is a {'DINO' if family == 'dino' else 'MoCo-v3'} training checkpoint, "
                f"not a -a {arch} one: give -a {' or '.join(names)}"
            )
        return arch
    if family == "mocov3":
        found = _MOCOV3_ARCHS.get(str(ckpt.get("arch")))
    else:
        flags = ckpt.get("args")
        found = _DINO_ARCHS.get((getattr(flags, "arch", None), int(getattr(flags, "patch_size", 16) or 16)))
    if found is None:
        raise UserError(f"checkpoint '{path}' does not say which release it is: give -a {' or '.join(names)}")
    return found


def _plain_arch(ckpt: Any, arch: str | None, path: str) -> str:
    if arch is not None:
        backbone_spec(arch)  # an unknown name is one line listing the zoo
        return arch
    saved = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if not isinstance(saved, str) or not saved:
        raise UserError(f"checkpoint '{path}' does not say its arch (no 'arch' entry): give -a ARCH")
    try:
        backbone_spec(saved)
    except UserError:
        raise UserError(
            f"checkpoint '{path}' says arch '{saved}', which selfsup does not build: give -a ARCH"
        ) from None
    return saved


def _method(family: str, ckpt: Any, state: dict | None, arch: str) -> str:
    run = ckpt.get("run") if isinstance(ckpt, dict) and isinstance(ckpt.get("run"), dict) else {}
    if family in ("dino", "mocov3"):
        return family
    if family == "release":
        return releases.RELEASES[arch].family
    if family == "swav":
        if "teacher" in run:
            return "swav_disco"
        return {"DCresnet50": "deepcluster_v2", "SELAresnet50": "sela_v2"}.get(arch, "swav")
    if family == "moco":
        if isinstance(run.get("method"), str):
            return run["method"].removeprefix("build_")
        teacher = state is not None and any(".teacher." in f".{k}" or "teacher_encoder" in k for k in state)
        return "disco" if teacher else "moco"
    if "label" in run:
        return "semi"
    return "lincls" if isinstance(ckpt, dict) and ("best_acc1" in ckpt or run) else "state_dict"


# -- reading each layout ---------------------------------------------------------


def _load_strict(model: nn.Module, state: dict, path: str, arch: str, what: str, ckpt: Any) -> None:
    expected = model.state_dict()
    if expected and not any(k in state for k in expected):
        raise UserError(
            f"checkpoint '{path}' holds no backbone weights of -a {arch} ({what}; its keys: {_first_keys(state)})"
        )
    problem = ck.describe_mismatch(expected, state)
    if problem:
        raise ck.arch_mismatch("checkpoint", path, "-a", arch, problem, ckpt)
    model.load_state_dict(state, strict=True)


def _split_slot(state: dict, slot: str) -> tuple[dict, dict]:
    return {k: v for k, v in state.items() if not k.startswith(f"{slot}.")}, ck.strip_prefix(state, f"{slot}.")


def _small_of(ckpt: Any, state: dict) -> bool:
    if isinstance(ckpt, dict) and "small_images" in ckpt:
        return bool(ckpt["small_images"])
    w = state.get("conv1.weight")  # a ResNet's stem says it; timm CNNs' stride-1 stem keeps the same weights
    return bool(w is not None and w.dim() == 4 and w.shape[-1] == 3)


def _moco_parts(ckpt, state, arch, path, with_head):
    sub = next((ck.strip_prefix(state, p) for p in ("module.encoder_q.", "encoder_q.") if _has_prefix(state, p)), {})
    small = _small_of(ckpt, sub)
    model, _ = create_backbone(arch, small)
    trunk, head_state = _split_slot(sub, model.head_name)
    _load_strict(model, trunk, path, arch, "read as MoCo's module.encoder_q.*", ckpt)
    head = None
    if with_head:
        if not head_state:
            raise UserError(f"checkpoint '{path}' has no projection head under module.encoder_q.{model.head_name}.*")
        head = head_module(head_state, "relu")
        problem = ck.describe_mismatch(head.state_dict(), head_state)
        if problem:
            raise UserError(
                f"checkpoint '{path}': its head module.encoder_q.{model.head_name}.* is not an MLP: {problem}"
            )
        head.load_state_dict(head_state, strict=True)
    return model, head, small, "pretraining checkpoint (module.encoder_q.*)"


def _swav_parts(ckpt, state, arch, path, with_head):
    flat = ck.strip_prefix(state, "module.") if _has_prefix(state, "module.") else dict(state)
    hidden = flat.get("projection_head.0.weight")
    last = flat.get("projection_head.3.weight", flat.get("projection_head.weight"))
    model = SwAVModel(
        arch,
        hidden_mlp=int(hidden.shape[0]) if hidden is not None else 0,
        feat_dim=int(last.shape[0]) if last is not None else 0,
        nmb_prototypes=0,
        small_images=_small_of(ckpt, flat),
    )
    load_official_state(model, flat, path, "checkpoint", ignore=("prototypes.",))
    head = model.projection_head if with_head else None
    if with_head and head is None:
        raise UserError(f"checkpoint '{path}' (SwAV layout) has no projection_head.* to keep")
    return model.backbone, head, model.small_images, "SwAV layout (flat trunk, projection_head.*)"


def _release_parts(arch, path, with_head):
    try:
        encoder, release, layout = releases.load_release_encoder(arch, path)
    except UserError as exc:  # its messages speak of the teacher flag; here the file is the export's input
        text = str(exc).replace("--teacher_arch", "-a").replace("teacher '", "checkpoint '")
        raise UserError(text.replace("--teacher release file", "checkpoint")) from None
    head = encoder.get_submodule(encoder.head_name)
    set_head(encoder, nn.Identity())
    if isinstance(head, nn.Identity):
        head = None
    elif isinstance(head, releases.DinoBottleneck):
        head = head.mlp  # the bottleneck MLP itself: a Sequential (or one Linear), as every head here
    if with_head and head is None:
        raise UserError(
            f"checkpoint '{path}' ({release.files}, read as {layout}) holds no projection head: "
            "export it without --with-head"
        )
    return encoder, head if with_head else None, False, f"{release.family} release ({layout})"


def _plain_parts(ckpt, state, arch, path, with_head):
    small = _small_of(ckpt, ck.strip_prefix(state, "module.") if _has_prefix(state, "module.") else state)
    model, _ = create_backbone(arch, small)
    trunk = ck.backbone_state(state, model.head_name)
    _load_strict(model, trunk, path, arch, "read as a linear evaluation or plain state dict", ckpt)
    if with_head:
        slot = model.head_name
        held = f"a classifier under {slot}.*" if any(f"{slot}." in k for k in state) else "no projection head"
        raise UserError(
            f"checkpoint '{path}' is a linear-evaluation or plain checkpoint: it holds {held}, not a "
            "projection head; export it without --with-head (or export its pretraining checkpoint with --with-head)"
        )
    return model, None, small, "linear evaluation / state dict (module.*, classifier dropped)"


def _export_parts(ckpt, arch, path, with_head):
    meta = ckpt["exported"]
    model, _ = load_exported_encoder(path, arch, with_head=with_head, what="checkpoint")
    head = None
    if with_head:
        head = model.get_submodule(model.head_name)
        set_head(model, nn.Identity())
    return model, head, meta.get("small_images") == "true", f"export of tools/export.py ({meta.get('library')})"


def read_source(path: str, arch: str | None = None, with_head: bool = False, image_size: int | None = None) -> Source:
    """The backbone (and with `with_head` the projection head) of any
    checkpoint the project writes or reads, loaded key by key. `arch` None:
    the file's own 'arch' (or the release it says it is)."""
    ckpt = ck.load_file(path, "checkpoint")
    state = None
    if not (isinstance(ckpt, dict) and (isinstance(ckpt.get("teacher"), dict) or "exported" in ckpt)):
        state = ck.state_dict_of(ckpt, path)
    family = _family(ckpt, state, arch)
    if family == "export":
        arch = ckpt["exported"].get("arch", "") if arch is None else arch
        model, head, small, layout = _export_parts(ckpt, arch, path, with_head)
        method = ckpt["exported"].get("method", "")
        arch = ckpt["exported"].get("arch", arch)
    elif family in ("dino", "mocov3", "release"):
        arch = _release_arch(family, ckpt, arch, path) if family != "release" else arch
        model, head, small, layout = _release_parts(arch, path, with_head)
        method = releases.RELEASES[arch].family
    else:
        arch = _plain_arch(ckpt, arch, path)
        read = {"moco": _moco_parts, "swav": _swav_parts, "plain": _plain_parts}[family]
        model, head, small, layout = read(ckpt, state, arch, path, with_head)
        method = _method(family, ckpt, state, arch)
        arch = canonical_arch(arch)
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    if image_size is None:
        saved = ckpt.get("image_size") if isinstance(ckpt, dict) else None
        image_size = int(saved) if isinstance(saved, int) else (32 if small else _native_size(arch))
    return Source(
        path=path,
        arch=arch,
        backbone=model.eval(),
        head=head.eval() if head is not None else None,
        method=method,
        layout=layout,
        epoch=int(epoch) if isinstance(epoch, (int, float)) or torch.is_tensor(epoch) else None,
        small_images=bool(small),
        image_size=int(image_size),
        sha256=file_sha256(path),
    )


def _native_size(arch: str) -> int:
    return 224 if releases.is_release(arch) else default_image_size(arch)
