"""Checkpoints in the original's layout, written atomically, and the loaders
that hand a pretrained backbone from one script to the next.

Every file the project writes whole (checkpoints, embeddings, plots, the
detectron2 pickle, metrics) goes through :func:`atomic_write` (from
selfsup.core.files, re-exported here): see there.

Layout (MoCo's): ``{"epoch", "arch", "state_dict", "optimizer"}`` with
``state_dict`` keys prefixed ``module.`` (``module.encoder_q.*``,
``module.encoder_k.*``, ``module.queue``, ...). We add ``small_images`` so a
later script rebuilds the same stem.
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle
import pickletools
import re
import warnings
from typing import Any, Mapping

import torch

from selfsup.core import distributed as du
from selfsup.core.errors import UserError

# The atomic writer lives in core.files (no torch there, for the analysis
# scripts' quick start); checkpoints and every other writer use it from here too.
from selfsup.core.files import atomic_write as atomic_write
from selfsup.core.files import copy_file as copy_file
from selfsup.core.files import partial_path as partial_path
from selfsup.core.files import remove_stale_temporaries as remove_stale_temporaries
from selfsup.core.files import same_file as same_file

CKPT_PATTERN = re.compile(r"checkpoint_(\d+)(?:_iter(\d+))?\.pth\.tar$")


def checkpoint_name(epoch: int, iteration: int | None = None) -> str:
    """checkpoint_NNNN.pth.tar after epoch NNNN; checkpoint_NNNN_iterIIIIII.pth.tar
    for a mid-epoch checkpoint (IIIIII batches of epoch NNNN done)."""
    return (
        f"checkpoint_{epoch:04d}.pth.tar"
        if iteration is None
        else f"checkpoint_{epoch:04d}_iter{iteration:06d}.pth.tar"
    )


def _float_tensors(obj, key):
    """(key path, tensor) of every floating tensor in nested dicts/lists."""
    if torch.is_tensor(obj):
        if obj.is_floating_point() and obj.numel():
            yield key, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{key}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{key}[{i}]")


def first_non_finite(state: Mapping[str, Any]) -> str | None:
    """The key (e.g. 'state_dict.module.fc.weight', 'optimizer.state.3.momentum_buffer')
    of the first floating tensor of a checkpoint's weights or optimizer state
    that holds a NaN or an inf; None when all are finite. One isfinite-all
    reduction per tensor, read back once per device."""
    named = [
        *_float_tensors(state.get("state_dict"), "state_dict"),
        *_float_tensors(state.get("optimizer"), "optimizer"),
    ]
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    bad = []
    for idx in by_device.values():
        finite = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).cpu()
        bad += [idx[j] for j in (~finite).nonzero().flatten().tolist()]
    return named[min(bad)][0] if bad else None


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """torch.save through atomic_write: a crash never leaves a half-written
    checkpoint under the real name, and a writer killed mid-write leaves a
    partial file that the next save (or start) removes. Weights or optimizer
    state holding NaN or inf are never written: the last checkpoint stays the
    one a rerun resumes from. The one checkpoint writer of the project."""
    folder = os.path.dirname(os.path.abspath(path))
    kept = path if os.path.isfile(path) else latest_checkpoint(folder)
    bad = first_non_finite(state)
    if bad is not None:
        last = f"the last checkpoint '{kept}' is kept" if kept else "no checkpoint is written"
        raise UserError(
            f"not writing checkpoint '{path}': {bad} holds NaN or inf values (the training diverged); {last}"
        )
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    with atomic_write(path, kept=kept, what="checkpoint") as f:
        torch.save(state, f)


def checkpoint_progress(path: str) -> tuple[int, int] | None:
    """(epochs done, batches of the next epoch done) that a checkpoint_* name says."""
    m = CKPT_PATTERN.search(os.path.basename(path))
    if not m:
        return None
    epoch = int(m.group(1))
    return (epoch, int(m.group(2))) if m.group(2) is not None else (epoch + 1, 0)


def run_checkpoints(folder: str) -> list[str]:
    """checkpoint_*.pth.tar files in `folder`, oldest progress first."""
    found = [(checkpoint_progress(p), p) for p in glob.glob(os.path.join(folder, "checkpoint_*.pth.tar"))]
    return [p for key, p in sorted(f for f in found if f[0] is not None)]


def latest_checkpoint(folder: str) -> str | None:
    """Path of the checkpoint_NNNN[_iterIIIIII].pth.tar in `folder` furthest
    into the run, or None."""
    found = run_checkpoints(folder)
    return found[-1] if found else None


# --unsafe-load: a process-wide policy, kept in the environment so that the
# workers mp.spawn starts (fresh interpreters) inherit it. Only the flag's
# action (selfsup.cli.flags.add_unsafe_load_arg) sets it.
UNSAFE_LOAD_ENV = "SELFSUP_UNSAFE_LOAD"
UNSAFE_HINT = "if you trust the file, rerun with --unsafe-load (see docs/safety.md)"


def set_unsafe_load(enabled: bool = True) -> None:
    if enabled:
        os.environ[UNSAFE_LOAD_ENV] = "1"
    else:
        os.environ.pop(UNSAFE_LOAD_ENV, None)


def unsafe_load_enabled() -> bool:
    return os.environ.get(UNSAFE_LOAD_ENV) == "1"


def allowed_globals() -> list[type]:
    """Non-tensor types a checkpoint may hold beyond torch's own weights_only
    list (tensors, torch dtypes/devices, dict/list/tuple/set, numbers, str,
    bytes, OrderedDict, Counter), which already covers every file this
    project writes (MoCo/DisCo/lincls: epoch, arch, state_dict, optimizer,
    best_acc1 float, small_images bool, image_size int, GradScaler floats;
    SwAV: the same plus size_crops list; SwAV eval: the LR scheduler's
    state, MultiStepLR milestones being a Counter) and the official MoCo
    (epoch, arch, state_dict, optimizer, best_acc1 tensor) and SwAV /
    DeepCluster-v2 files (a bare state dict; training checkpoints add apex's
    amp state, an OrderedDict of floats and ints)."""
    return [
        # DINO's training checkpoints (and SwAV/MoCo forks built on its
        # utils) store the run's flags as "args": a Namespace of plain values.
        argparse.Namespace,
    ]


_GLOBAL_RE = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _scan_pickle(path):
    """('module.name' of each global the file's first pickle imports, whether
    that pickle parsed), read with pickletools: nothing is executed. Best
    effort (STACK_GLOBAL names are tracked through the memo), for messages."""
    found, strings, memo, last = [], [], {}, None
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if op.name.endswith(("UNICODE", "UNICODE8", "STRING")) and isinstance(arg, str):
                    last = arg
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = last
                    continue
                elif op.name.endswith("PUT"):
                    memo[arg] = last
                    continue
                elif op.name.endswith("GET"):
                    last = memo.get(arg)
                else:
                    last = None
                if last is not None:
                    strings.append(last)
    except Exception:  # truncated or not a pickle
        return list(dict.fromkeys(found)), False
    return list(dict.fromkeys(found)), True


def _refused_globals(path, exc):
    """(the disallowed globals that made weights_only refuse `path`, whether
    the file is a pickle at all)."""
    names = _GLOBAL_RE.findall(str(exc))
    try:  # a torch.save zip: every disallowed global, not only the first
        return sorted(set(names + torch.serialization.get_unsafe_globals_in_checkpoint(path))), True
    except Exception:  # legacy (pre-1.6) or raw pickle: scan it ourselves
        ok = {f"{t.__module__}.{t.__qualname__}" for t in allowed_globals()}
        scanned, parsed = _scan_pickle(path)
        names += [g for g in scanned if not g.startswith("torch.") and g not in ok]
        return sorted(set(names)), parsed


# -- safetensors files (tools/export.py writes them; never a pickle) ---------------

# The metadata "format" of the files selfsup.export writes, and the prefix
# of their projection head's keys (the backbone's keys are its library's own).
EXPORT_FORMAT = "selfsup-export/1"
EXPORT_HEAD_PREFIX = "projection_head."
SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # the safetensors format's own cap on its JSON header


def is_safetensors(path: str) -> bool:
    """Whether `path` is a safetensors file, told by its first bytes (an
    8-byte little-endian header length, then the JSON header's '{'), not by
    its name, so a renamed export is still read without any pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= _SAFETENSORS_HEADER_LIMIT


def read_safetensors(path: str, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, read with the safetensors
    library: a JSON header and raw tensor bytes, nothing is unpickled."""
    from safetensors import safe_open  # a dependency of timm; imported here to keep core's import light

    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        size = os.fstat(f.fileno()).st_size
    if 8 + header > size:
        raise UserError(
            f"{what} '{path}' is a truncated safetensors file (its header alone takes {8 + header} bytes, "
            f"the file has {size})"
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # the library's SafetensorError, a truncated file, ...
        raise UserError(f"{what} '{path}' is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, metadata


def exported_checkpoint(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, Any]:
    """A safetensors file as the dict a checkpoint loads to. An export of
    ours becomes MoCo's layout (``module.encoder_q.<backbone key>``, the
    projection head in the backbone's head slot) with ``arch``,
    ``small_images``, ``image_size``, ``epoch`` and the file's metadata under
    ``exported``, so every reader of pretrained weights takes it as it takes
    a pretraining checkpoint; any other safetensors file is a plain state
    dict (timm's or torchvision's own weights, say)."""
    if metadata.get("format") != EXPORT_FORMAT:
        return {"state_dict": dict(tensors)}
    slot = metadata.get("head_slot") or "fc"
    state = {}
    for k, v in tensors.items():
        inner = f"{slot}.{k[len(EXPORT_HEAD_PREFIX) :]}" if k.startswith(EXPORT_HEAD_PREFIX) else k
        state[f"module.encoder_q.{inner}"] = v
    ckpt: dict[str, Any] = {
        "arch": metadata.get("arch"),
        "state_dict": state,
        "small_images": metadata.get("small_images") == "true",
        "exported": dict(metadata),
    }
    for key in ("epoch", "image_size"):
        if str(metadata.get(key, "")).isdigit():
            ckpt[key] = int(metadata[key])
    return ckpt


def load_file(path: str, what: str = "checkpoint", unsafe: bool | None = None) -> Any:
    """torch.load on CPU, with one-line errors for a missing, unreadable or
    unsafe file.

    The default loads with weights_only=True: tensors, plain Python values
    and allowed_globals() only, so a planted pickle cannot run code. With
    `unsafe` (default: the --unsafe-load policy) torch.load runs the file's
    pickle as is, for files the user trusts. A safetensors file (told by its
    header) is read without any pickle, whatever `unsafe` says, into the
    layout of exported_checkpoint."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist")
    if is_safetensors(path):
        return exported_checkpoint(*read_safetensors(path, what))
    if path.endswith(SAFETENSORS_SUFFIX):  # named as one: never handed to the unpickler
        raise UserError(
            f"{what} '{path}' is not a safetensors file (its first bytes are not a safetensors header); "
            "a torch checkpoint must not be named .safetensors"
        )
    unsafe = unsafe_load_enabled() if unsafe is None else unsafe
    try:
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(allowed_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol")  # raw pickles: we explain below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise UserError(
                f"{what} '{path}' is not a readable torch checkpoint ({type(exc).__name__}: {exc})"
            ) from None
        names, is_pickle = _refused_globals(path, exc)
        if names:
            raise UserError(
                f"{what} '{path}' needs {', '.join(names)}, which is not on the allow-list of "
                f"checkpoint types (loading it could run code); {UNSAFE_HINT}"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]*)", str(exc))
        if not is_pickle:  # garbage or a truncated file: nothing to trust
            raise UserError(
                f"{what} '{path}' is not a readable torch checkpoint "
                f"({detail.group(1).strip() if detail else 'not a pickle'})"
            ) from None
        raise UserError(
            f"{what} '{path}' cannot be read with weights_only=True "
            f"({detail.group(1).strip() if detail else 'not a torch.save file'}); {UNSAFE_HINT}"
        ) from None
    except Exception as exc:  # zip and EOF errors all mean the same thing here
        raise UserError(f"{what} '{path}' is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def state_dict_of(ckpt: Any, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: its 'state_dict' (or 'model') entry,
    or the checkpoint itself when it already is one."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt
    raise UserError(f"'{path}' holds no state dict (expected a dict with 'state_dict' or a dict of tensors)")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


ENCODER_PREFIXES = (
    "module.encoder_q.",
    "encoder_q.",
    "module.encoder.",
    "encoder.",
    "module.backbone.",
    "backbone.",
    "module.",
)


def backbone_state(state_dict: Mapping[str, torch.Tensor], head_name: str) -> dict[str, torch.Tensor]:
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


def describe_mismatch(
    model_state: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor], limit: int = 3
) -> str:
    """A short text naming the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in model_state if k not in loaded]
    unexpected = [k for k in loaded if k not in model_state]
    shapes = [
        f"{k} {tuple(loaded[k].shape)} vs {tuple(model_state[k].shape)}"
        for k in model_state
        if k in loaded and loaded[k].shape != model_state[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs model)", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def arch_mismatch(what: str, path: str, flag: str, arch: str, problem: str, ckpt: Any = None) -> UserError:
    """The one line for weights that do not fit the model `flag arch` builds,
    e.g. "--pretrained 'x.pth' does not match -a resnet34 (it was trained as
    'resnet18'): missing: ..."; the hint comes from `ckpt`'s own "arch"."""
    saved = ckpt.get("arch") if isinstance(ckpt, dict) else None
    hint = f" (it was trained as '{saved}')" if saved and saved != arch else ""
    return UserError(f"{what} '{path}' does not match {flag} {arch}{hint}: {problem}")


def load_into(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str, arch: str, flag: str = "-a"
) -> torch.nn.Module:
    """Strictly load `state` into `model`, or raise one line naming what differs."""
    model_state = model.state_dict()
    problem = describe_mismatch(model_state, state)
    if problem:
        raise arch_mismatch("checkpoint", path, flag, arch, problem)
    model.load_state_dict(state, strict=True)
    return model


def small_images_of(ckpt: Any, default: bool = False) -> bool:
    return bool(ckpt.get("small_images", default)) if isinstance(ckpt, dict) else default


def prefixed_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with the ``module.`` prefix, as DDP-trained originals have."""
    return {f"module.{k}": v for k, v in du.unwrap(model).state_dict().items()}
