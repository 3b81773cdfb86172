"""Reading back the files tools/export.py writes (selfsup.export).

An export is a safetensors file: the backbone under the keys of its own
library's model (timm or torchvision), the projection head, when it was kept
(``--with-head``), under ``projection_head.*``, and string metadata (arch,
stem, image size, the head's activation, ...; selfsup.export.metadata).
Nothing in it is a pickle. :func:`load_exported` rebuilds the backbone (and
head) from it, for users; :func:`load_exported_encoder` is what the frozen
teacher of DisCo uses (selfsup.models.teacher).
"""

from __future__ import annotations

from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models import releases
from selfsup.models.backbones import canonical_arch, create_backbone, set_head

# The activations a projection head may hold (MoCo, SwAV, MoCo-v3: ReLU; DINO: GELU).
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def build_trunk(arch: str, small_images: bool = False) -> nn.Module:
    """The backbone `arch` names, its head slot empty (Identity): a release
    trunk (dino_vits16, mocov3_vit_small, ...) as selfsup.models.releases
    builds it, anything else as create_backbone does."""
    if releases.is_release(arch):
        return releases.build_trunk(releases.RELEASES[arch])[0]
    return create_backbone(arch, small_images)[0]


def same_arch(given: str, held: str) -> bool:
    """Whether -a `given` names the backbone a file `held` ("efficientnet_b0"
    and "efficientb0" do; "timm:resnet18" and "resnet18" do not)."""
    if given == held:
        return True
    try:
        return canonical_arch(given) == held
    except UserError:
        return False


def activation_name(head: nn.Module) -> str:
    """ "relu" or "gelu": the one activation class a projection head uses
    (a Linear alone: "relu", which it never applies)."""
    found = {name for m in head.modules() for name, cls in ACTIVATIONS.items() if type(m) is cls}
    others = [
        type(m).__name__
        for m in head.modules()
        if not isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.Sequential, nn.Identity, *ACTIVATIONS.values()))
    ]
    if others or len(found) > 1:
        raise UserError(
            f"the projection head holds {', '.join(others or sorted(found))}: an export keeps heads made of "
            "Linear, BatchNorm1d and one kind of ReLU or GELU only; export without --with-head"
        )
    return found.pop() if found else "relu"


def head_module(state: dict, activation: str = "relu") -> nn.Module | None:
    """The head whose weights are `state` (its keys relative to the head): a
    Linear (``weight``/``bias``) or the Sequential of Linear, BatchNorm1d and
    `activation` layers its numbered keys describe; None when `state` is empty."""
    if not state:
        return None
    if "weight" in state:
        w = state["weight"]
        return nn.Linear(w.shape[1], w.shape[0], bias="bias" in state)
    act = ACTIVATIONS.get(activation)
    if act is None:
        raise UserError(f"projection head activation '{activation}': expected one of {', '.join(ACTIVATIONS)}")
    return releases.mlp_from_state(state, "", act)


def split_export(tensors: dict, metadata: dict, path: str, what: str = "file") -> tuple[dict, dict]:
    """(backbone tensors, head tensors) of an export; one line when the file
    is a safetensors file that tools/export.py did not write."""
    if metadata.get("format") != ck.EXPORT_FORMAT:
        raise UserError(
            f"{what} '{path}' is a safetensors file without the metadata of tools/export.py "
            f"(format {metadata.get('format')!r}, expected {ck.EXPORT_FORMAT!r}): its arch and stem are unknown"
        )
    head = ck.strip_prefix(tensors, ck.EXPORT_HEAD_PREFIX)
    trunk = {k: v for k, v in tensors.items() if not k.startswith(ck.EXPORT_HEAD_PREFIX)}
    return trunk, head


def load_exported_encoder(
    path: str, arch: str | None = None, with_head: bool = False, what: str = "file", arch_flag: str = "-a"
) -> tuple[nn.Module, dict]:
    """(backbone in eval mode, the file's metadata) of an export, its weights
    checked key by key; with `with_head` the projection head sits in the
    backbone's head slot (the encoder whose output DisCo matched). `arch`,
    when given, must be the file's; `what`/`arch_flag` name the file and the
    flag in messages."""
    tensors, metadata = ck.read_safetensors(path, what)
    trunk_state, head_state = split_export(tensors, metadata, path, what)
    held = metadata.get("arch", "")
    if arch is not None and not same_arch(arch, held):
        raise UserError(f"{what} '{path}' holds a {held} backbone (written by tools/export.py), not {arch_flag} {arch}")
    model = build_trunk(held, metadata.get("small_images") == "true")
    problem = ck.describe_mismatch(model.state_dict(), trunk_state)
    if problem:
        raise UserError(f"{what} '{path}' does not fit its own arch {held}: {problem}")
    model.load_state_dict(trunk_state, strict=True)
    if with_head:
        if not head_state:
            raise UserError(
                f"{what} '{path}' holds no projection head (it was exported without one): "
                "export the checkpoint again with tools/export.py --with-head"
            )
        head = head_module(head_state, metadata.get("head_activation", "relu"))
        problem = ck.describe_mismatch(head.state_dict(), head_state)
        if problem:
            raise UserError(f"{what} '{path}': its projection_head.* keys do not form a head: {problem}")
        head.load_state_dict(head_state, strict=True)
        set_head(model, head)
    return model.eval(), metadata


def load_exported(path: str, with_head: bool = False) -> nn.Module:
    """The backbone of a file tools/export.py wrote, in eval mode, built with
    its own stem (``--small-images`` ones included): ``model(images)`` is
    the pooled feature; with `with_head`, the projection head's output.
    For users of selfsup; timm and torchvision load the file by themselves
    too (docs/export.md)."""
    return load_exported_encoder(path, with_head=with_head)[0]
