"""Checkpoints in the original's layout, written atomically, and the loaders
that hand a pretrained backbone from one script to the next.

Layout (MoCo's): ``{"epoch", "arch", "state_dict", "optimizer"}`` with
``state_dict`` keys prefixed ``module.`` (``module.encoder_q.*``,
``module.encoder_k.*``, ``module.queue``, ...). We add ``small_images`` so a
later script rebuilds the same stem.
"""
import glob
import os
import re

import torch

from .backbones import canonical_arch, create_backbone
from .errors import UserError

CKPT_PATTERN = re.compile(r"checkpoint_(\d+)\.pth\.tar$")


def checkpoint_name(epoch):
    return f"checkpoint_{epoch:04d}.pth.tar"


def save_checkpoint(state, path):
    """torch.save to a temporary file, then rename: a crash never leaves a
    half-written checkpoint under the real name."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def latest_checkpoint(folder):
    """Path of the highest-numbered checkpoint_NNNN.pth.tar in `folder`, or None."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(folder, "checkpoint_*.pth.tar"))
             if (m := CKPT_PATTERN.search(os.path.basename(p)))]
    return max(found)[1] if found else None


def load_file(path, what="checkpoint"):
    """torch.load on CPU with one-line errors for a missing or unreadable file."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and EOF errors all mean the same thing here
        raise UserError(f"{what} '{path}' is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def state_dict_of(ckpt, path="checkpoint"):
    """The tensor dict inside a checkpoint: its 'state_dict' (or 'model') entry,
    or the checkpoint itself when it already is one."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt
    raise UserError(f"'{path}' holds no state dict (expected a dict with 'state_dict' or a dict of tensors)")


def strip_prefix(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


ENCODER_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.encoder.", "encoder.", "module.backbone.",
                    "backbone.", "module.")


def backbone_state(state_dict, head_name):
    """Backbone weights from a pretraining (``module.encoder_q.*``), DisCo,
    SwAV or linear-eval (``module.*``) state dict, without the head."""
    for prefix in ENCODER_PREFIXES:  # most specific first
        sub = strip_prefix(state_dict, prefix)
        if sub:
            break
    else:
        sub = dict(state_dict)
    drop = (f"{head_name}.", "projection_head.", "prototypes.")
    return {k: v for k, v in sub.items() if not k.startswith(drop)}


def describe_mismatch(model_state, loaded, limit=3):
    """A short text naming the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in model_state if k not in loaded]
    unexpected = [k for k in loaded if k not in model_state]
    shapes = [f"{k} {tuple(loaded[k].shape)} vs {tuple(model_state[k].shape)}"
              for k in model_state if k in loaded and loaded[k].shape != model_state[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs model)", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_into(model, state, path, arch, flag="-a"):
    """Strictly load `state` into `model`, or raise one line naming what differs."""
    model_state = model.state_dict()
    problem = describe_mismatch(model_state, state)
    if problem:
        raise UserError(f"checkpoint '{path}' does not match {flag} {arch}: {problem}")
    model.load_state_dict(state, strict=True)
    return model


def small_images_of(ckpt, default=False):
    return bool(ckpt.get("small_images", default)) if isinstance(ckpt, dict) else default


def load_backbone(arch, path, small_images=None):
    """A backbone (head = Identity) with the weights of any of our checkpoints:
    MoCo/DisCo pretraining, SwAV, or linear evaluation. `small_images=None`
    takes the stem the checkpoint was trained with."""
    ckpt = load_file(path)
    saved_arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if small_images is None:
        small_images = small_images_of(ckpt)
    model, _ = create_backbone(arch, small_images)
    state = backbone_state(state_dict_of(ckpt, path), model.head_name)
    try:
        return load_into(model, state, path, arch)
    except UserError as exc:
        if saved_arch and canonical_arch(arch) != saved_arch:
            raise UserError(f"checkpoint '{path}' was trained with arch '{saved_arch}', not -a {arch}") from None
        raise exc
