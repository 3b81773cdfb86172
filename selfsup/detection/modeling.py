"""Model parts the configs refer to by name (registered in detectron2's registries)."""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads

_NAME = "Res5ROIHeadsExtraNorm"


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5 ROI head with one more normalisation layer after the res5 stage.

    With a normalised (SyncBN) backbone and no frozen layers, the MoCo detection
    protocol adds a norm on the res5 output before the box predictor; the layer
    is named ``roi_heads.res5.norm`` and starts fresh.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


def register() -> None:
    """Register the ROI head once (safe to call repeatedly)."""
    if _NAME not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


register()
