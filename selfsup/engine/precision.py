"""Mixed precision and memory format for the training loops (--precision,
--channels-last).

fp32 is the default and the original's path. bf16 runs the forward pass
under ``torch.autocast(dtype=bfloat16)``; on a GPU without bf16 it falls back
to fp16 with a gradient scaler. fp16 always uses a gradient scaler. Weights,
optimiser state, the MoCo queue and every loss stay fp32: the losses in
selfsup.methods.losses cast their inputs to fp32 before dividing by the temperature.
"""
import contextlib

import torch

from selfsup.core.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision, device):
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


class Precision:
    """autocast context, gradient scaler and memory format of one run."""

    def __init__(self, precision="fp32", device=torch.device("cpu"), channels_last=False):
        self.device = torch.device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.channels_last = bool(channels_last)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @classmethod
    def from_args(cls, args):
        return cls(getattr(args, "precision", "fp32"), args.device, getattr(args, "channels_last", False))

    @property
    def name(self):
        names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+GradScaler"}
        return names[self.dtype] + (", channels_last" if self.channels_last else "")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def model(self, model):
        """The model in channels-last layout (4-D weights only) when asked."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x):
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def backward_step(self, loss, optimizer):
        """loss.backward() and optimizer.step(), through the scaler for fp16."""
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, state):
        if state is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
