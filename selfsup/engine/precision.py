"""Mixed precision and memory format for every training loop (--precision,
--channels-last; the SwAV scripts' --use_fp16, --amp_dtype, --channels_last).

fp32 is the default of the MoCo family and the original's path. bf16 runs the forward pass
under ``torch.autocast(dtype=bfloat16)``; on a GPU without bf16 it falls back
to fp16 with a gradient scaler. fp16 always uses a gradient scaler. Weights,
optimiser state, the MoCo queue and every loss stay fp32: the losses in
selfsup.methods.losses cast their inputs to fp32 before dividing by the temperature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from selfsup.core.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16  # e.g. V100: fp16 with a gradient scaler instead
        return torch.bfloat16
    return torch.float16


def swav_precision(use_fp16: bool, amp_dtype: str, device: torch.device) -> str:
    """The --precision that the SwAV scripts' --use_fp16 / --amp_dtype name.

    --amp_dtype auto: bf16 on GPUs (which falls back to fp16 with a gradient
    scaler where the GPU lacks bf16); on the CPU auto means fp32 (CPU
    autocast is slower than fp32 here). bfloat16/float16 force the choice,
    also on the CPU."""
    if not use_fp16:
        return "fp32"
    if amp_dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return {"bfloat16": "bf16", "float16": "fp16"}[amp_dtype]


class Precision:
    """autocast context, gradient scaler and memory format of one run."""

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu", channels_last: bool = False):
        self.device = torch.device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.channels_last = bool(channels_last)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @classmethod
    def from_args(cls, args: Any) -> Precision:
        """From the MoCo family's --precision and --channels-last."""
        return cls(getattr(args, "precision", "fp32"), args.device, getattr(args, "channels_last", False))

    @classmethod
    def from_swav_args(cls, args: Any) -> Precision:
        """From the SwAV scripts' --use_fp16, --amp_dtype and --channels_last."""
        return cls(swav_precision(args.use_fp16, args.amp_dtype, args.device), args.device, args.channels_last)

    @property
    def name(self) -> str:
        names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+GradScaler"}
        return names[self.dtype] + (", channels_last" if self.channels_last else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in channels-last layout (4-D weights only) when asked."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def backward_step(self, loss: torch.Tensor, optimizer: Any, before_step: Callable[[], None] | None = None) -> None:
        """loss.backward() and optimizer.step(), through the scaler for fp16.

        `optimizer` is any object with param_groups and step(), e.g. LARS:
        the scaler unscales the gradients first, and skips the step when
        one is not finite. `before_step` runs between the two (SwAV drops
        the frozen prototypes' gradients there)."""
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            if before_step is not None:
                before_step()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
