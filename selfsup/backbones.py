"""The backbone zoo: one function from an architecture name to a network.

Every name the paper's commands use maps to a torchvision or timm model. The
model keeps its own classifier attribute (``fc`` for ResNets, ``classifier``
for EfficientNet/MobileNet, ``head`` for the vision transformers) but that
attribute is set to ``nn.Identity``, so ``model(x)`` returns the pooled
feature vector. Heads are attached in that same attribute later, which keeps
checkpoint keys as the original's: ``encoder_q.fc.*`` / ``encoder_q.classifier.*``.

``small_images=True`` adapts the stem to 32-64 px inputs: a 3x3 stride-1 first
convolution and no max-pool for ResNets, a stride-1 stem for the timm CNNs,
and 4 px (ViT) / 8 px (XCiT) patches for the transformers.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck

from .errors import UserError


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[bool], nn.Module]  # small_images -> model with its head in place
    head_name: str                      # attribute that holds the classifier
    feat_dim: int                       # width of the pooled feature
    family: str                         # "resnet", "timm-cnn" or "vit"
    image_size: int = 224               # the original's crop size for this arch


def _torchvision_resnet(name):
    def build(small):
        model = getattr(tvm, name)(weights=None)
        if small:
            _small_resnet_stem(model)
        return model
    return build


def _small_resnet_stem(model):
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


class _WideBottleneck(Bottleneck):
    """Bottleneck whose output width is 8x its `planes` argument.

    Built with torchvision's ``width_per_group=128`` it reproduces SwAV's
    ResNet-50x2 block: inner width 2 * planes, output 2 * 4 * planes."""
    expansion = 8


def _swav_resnet50w2(small):
    """SwAV's ResNet-50x2: every width doubled, the stem included.

    torchvision's wide_resnet50_2 doubles only the inner bottleneck width, so
    the stem and the stages are rebuilt here with torchvision's own
    ``_make_layer``; parameter names and shapes then match SwAV's release."""
    model = tvm.ResNet(_WideBottleneck, [3, 4, 6, 3], width_per_group=128)
    width = 128
    if small:
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.inplanes = width
    model.layer1 = model._make_layer(_WideBottleneck, 64, 3)
    model.layer2 = model._make_layer(_WideBottleneck, 128, 4, stride=2)
    model.layer3 = model._make_layer(_WideBottleneck, 256, 6, stride=2)
    model.layer4 = model._make_layer(_WideBottleneck, 512, 3, stride=2)
    model.fc = nn.Linear(512 * _WideBottleneck.expansion, 1000)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _timm_cnn(name):
    def build(small):
        import timm
        model = timm.create_model(name, pretrained=False)
        if small:
            model.conv_stem.stride = (1, 1)
        return model
    return build


def _timm_vit(name, small_kwargs):
    def build(small):
        import timm
        kwargs = small_kwargs if small else {}
        return timm.create_model(name, pretrained=False, **kwargs)
    return build


BACKBONES: Dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(_torchvision_resnet("resnet18"), "fc", 512, "resnet"),
    "resnet34": BackboneSpec(_torchvision_resnet("resnet34"), "fc", 512, "resnet"),
    "resnet50": BackboneSpec(_torchvision_resnet("resnet50"), "fc", 2048, "resnet"),
    "resnet101": BackboneSpec(_torchvision_resnet("resnet101"), "fc", 2048, "resnet"),
    "resnet152": BackboneSpec(_torchvision_resnet("resnet152"), "fc", 2048, "resnet"),
    # SwAV-layout teachers: same trunk layout as the official SwAV release;
    # DeepCluster-v2 and SeLa-v2 were released from the SwAV repo with SwAV's R-50.
    "SWAVresnet50": BackboneSpec(_torchvision_resnet("resnet50"), "fc", 2048, "resnet"),
    "DCresnet50": BackboneSpec(_torchvision_resnet("resnet50"), "fc", 2048, "resnet"),
    "SELAresnet50": BackboneSpec(_torchvision_resnet("resnet50"), "fc", 2048, "resnet"),
    "resnet50w2": BackboneSpec(_swav_resnet50w2, "fc", 4096, "resnet"),
    "efficientb0": BackboneSpec(_timm_cnn("efficientnet_b0"), "classifier", 1280, "timm-cnn"),
    "efficientb1": BackboneSpec(_timm_cnn("efficientnet_b1"), "classifier", 1280, "timm-cnn"),
    # The original crops 456 px for B5 (orig moco/main_moco.py:187-190).
    "efficientb5": BackboneSpec(_timm_cnn("efficientnet_b5"), "classifier", 2048, "timm-cnn", image_size=456),
    # MobileNet-v3 large; its 960->1280 head conv counts as part of the backbone.
    "mobilenetv3": BackboneSpec(_timm_cnn("mobilenetv3_large_100"), "classifier", 1280, "timm-cnn"),
    "vit_tiny": BackboneSpec(
        _timm_vit("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}), "head", 192, "vit"),
    "xcit_tiny": BackboneSpec(
        _timm_vit("xcit_tiny_12_p8_224", {"img_size": 32}), "head", 192, "vit"),
}

ALIASES = {
    "ViT-Tiny": "vit_tiny", "vit-tiny": "vit_tiny", "vit_tiny_patch16_224": "vit_tiny",
    "XCiT-Tiny": "xcit_tiny", "xcit-tiny": "xcit_tiny", "xcit_tiny_12_p16_224": "xcit_tiny",
    "mobilenet_v3": "mobilenetv3", "efficientnet_b0": "efficientb0",
    "efficientnet_b1": "efficientb1", "efficientnet_b5": "efficientb5", "swav_resnet50": "SWAVresnet50",
}

ARCH_NAMES = sorted(BACKBONES)


def backbone_spec(arch: str) -> BackboneSpec:
    name = ALIASES.get(arch, arch)
    if name not in BACKBONES:
        raise UserError(f"unknown architecture '{arch}' (-a/--arch); known: {', '.join(ARCH_NAMES)}")
    return BACKBONES[name]


def canonical_arch(arch: str) -> str:
    backbone_spec(arch)
    return ALIASES.get(arch, arch)


def default_image_size(arch: str) -> int:
    """The crop size the original pretrained `arch` at (456 for efficientb5, else 224)."""
    return backbone_spec(arch).image_size


def create_backbone(arch: str, small_images: bool = False) -> Tuple[nn.Module, int]:
    """(model, feature width) for `arch`; the model's head attribute is Identity."""
    spec = backbone_spec(arch)
    model = spec.build(small_images)
    setattr(model, spec.head_name, nn.Identity())
    model.head_name = spec.head_name
    return model, spec.feat_dim


def set_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the backbone's classifier was (``fc``/``classifier``/``head``)."""
    setattr(model, model.head_name, head)
    return model


def get_head(model: nn.Module) -> nn.Module:
    return getattr(model, model.head_name)
