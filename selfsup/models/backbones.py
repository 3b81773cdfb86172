"""The backbone zoo: one function from an architecture name to a network.

Every name the paper's commands use maps to a torchvision or timm model. The
model keeps its own classifier attribute (``fc`` for ResNets, ``classifier``
for EfficientNet/MobileNet, ``head`` for the vision transformers) but that
attribute is set to ``nn.Identity``, so ``model(x)`` returns the pooled
feature vector. Heads are attached in that same attribute later, which keeps
checkpoint keys as the original's: ``encoder_q.fc.*`` / ``encoder_q.classifier.*``.

``small_images=True`` adapts the stem to 32-64 px inputs: a 3x3 stride-1 first
convolution and no max-pool for ResNets, a stride-1 stem for the timm CNNs,
and 4 px (ViT) / 8 px (XCiT) patches for the transformers. timm's
transformers are built with ``dynamic_img_size`` where they have it (their
position embeddings resampled to each input), so they run at any image
size; ``check_image_size`` refuses, before any work, a size a model cannot take.

Besides the paper's names, any timm model name (``convnext_atto``, or
``timm:NAME`` to force timm where a name is also ours) and any torchvision
classification model (``tv:NAME``) is a backbone; see ``_external_spec`` and
docs/teachers.md. Their head slot is a dotted path (``head.fc``,
``classifier.3``), read from the model itself.
"""

import difflib
import functools
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torchvision.models as tvm
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.resnet import Bottleneck

from selfsup.core.checks import bn_group_warning
from selfsup.core.errors import UserError


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[bool], nn.Module]  # small_images -> model with its head in place
    head_name: Optional[str]  # attribute that holds the classifier (None: read from the model)
    feat_dim: Optional[int]  # width of the pooled feature (None: read from the model)
    family: str  # "resnet", "timm-cnn", "vit", "timm" or "torchvision"
    image_size: int = 224  # the original's crop size for this arch


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
        return _timm_any_size(name, small_kwargs if small else {})

    return build


def _timm_any_size(name, kwargs):
    """timm's `name`, for any input size where it can be (ViT, DeiT, Swin...):
    dynamic_img_size resamples the position embeddings to each input's patch
    grid (identity at the size they were built for), so --image-size need not
    be the model's native one and the state dict is the same at every size.
    Models without the option are built as they are."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs)
    except TypeError:  # the model has no such option (XCiT, CNNs...)
        return timm.create_model(name, pretrained=False, **kwargs)


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
    "vit_tiny": BackboneSpec(_timm_vit("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}), "head", 192, "vit"),
    "xcit_tiny": BackboneSpec(_timm_vit("xcit_tiny_12_p8_224", {"img_size": 32}), "head", 192, "vit"),
}

# The paper's spellings. timm's own names (vit_tiny_patch16_224,
# xcit_tiny_12_p16_224, ...) are not aliases: they build exactly timm's model.
ALIASES = {
    "ViT-Tiny": "vit_tiny",
    "vit-tiny": "vit_tiny",
    "XCiT-Tiny": "xcit_tiny",
    "xcit-tiny": "xcit_tiny",
    "mobilenet_v3": "mobilenetv3",
    "efficientnet_b0": "efficientb0",
    "efficientnet_b1": "efficientb1",
    "efficientnet_b5": "efficientb5",
    "swav_resnet50": "SWAVresnet50",
}

ARCH_NAMES = sorted(BACKBONES)
TIMM_PREFIX, TV_PREFIX = "timm:", "tv:"
SMALL_IMAGE_SIZE = 32  # what --small-images builds fixed-size transformers for


# -- any timm or torchvision model --------------------------------------------


def _set_submodule(model, path, module):
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _classifier_width(module, model):
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    return getattr(model, "head_hidden_size", None) or model.num_features


def _small_stem(model):
    """The zoo's stems where a model has the same parts: a stride-2
    ``conv_stem`` (EfficientNet/MobileNet family) runs at stride 1; a 7x7
    ``conv1`` followed by ``maxpool`` (ResNet family) becomes the 3x3
    stride-1 stem without max-pool. Other CNNs are left as they are (they
    take any input size)."""
    stem = getattr(model, "conv_stem", None)
    if isinstance(stem, nn.Conv2d) and stem.stride == (2, 2):
        stem.stride = (1, 1)
        return
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (7, 7) and hasattr(model, "maxpool"):
        _small_resnet_stem(model)


def _timm_any(name):
    def build(small):
        import timm

        model = None
        if small:  # transformers built for a fixed size: build them for 32 px (any size if they can)
            for kwargs in ({"img_size": SMALL_IMAGE_SIZE, "dynamic_img_size": True}, {"img_size": SMALL_IMAGE_SIZE}):
                try:
                    model = timm.create_model(name, pretrained=False, **kwargs)
                    break
                except TypeError:
                    continue
                except Exception as exc:  # e.g. a window size that 32 px cannot hold
                    raise UserError(
                        f"-a {name} cannot be built for --small-images ({SMALL_IMAGE_SIZE} px): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                        "drop --small-images"
                    ) from None
        if model is None:
            model = timm.create_model(name, pretrained=False) if small else _timm_any_size(name, {})
            if small:
                _small_stem(model)
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        head = cfg.get("classifier", "head")
        if not isinstance(head, str):
            raise UserError(
                f"-a {name} has several classifier heads ({', '.join(head)}, a distillation "
                "model): not supported as a backbone; use its non-distilled variant"
            )
        try:
            width = _classifier_width(model.get_submodule(head), model)
        except AttributeError:
            raise UserError(
                f"-a {name}: timm names its classifier '{head}', which the model does not "
                "have; not supported as a backbone"
            ) from None
        model.reset_classifier(0)
        _set_submodule(model, head, nn.Identity())  # what reset_classifier(0) left there, made sure
        return model, head, width

    return build


def _last_classifier(model):
    """Dotted name of the last Linear with 1000 outputs (torchvision's fc,
    classifier[-1], heads.head, ...)."""
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    return found[-1] if found else None


def _torchvision_any(name):
    def build(small):
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        if small and name.startswith("vit_"):
            kwargs["image_size"] = SMALL_IMAGE_SIZE
        elif small and name.startswith(("swin_", "maxvit_")):
            raise UserError(
                f"-a tv:{name} cannot be built for --small-images (its windows need larger images); drop --small-images"
            )
        model = tvm.get_model(name, weights=None, **kwargs)
        if small and not name.startswith("vit_"):
            _small_stem(model)
        head = _last_classifier(model)
        if head is None:
            raise UserError(
                f"-a tv:{name} has no Linear classifier to replace (e.g. SqueezeNet's is a "
                "convolution): not supported as a backbone"
            )
        width = model.get_submodule(head).in_features
        parent, _, leaf = head.rpartition(".")
        container = model.get_submodule(parent) if parent else None
        if isinstance(container, nn.Sequential):  # the classifier's own dropout goes with it
            for key, m in container.named_children():
                if isinstance(m, nn.Dropout):
                    setattr(container, key, nn.Identity())
        _set_submodule(model, head, nn.Identity())
        return model, head, width

    return build


def _timm_names():
    try:
        import timm

        return timm.list_models()
    except ImportError:
        return []


def _torchvision_names():
    return tvm.list_models(module=tvm)


@functools.lru_cache(maxsize=None)
def _external_spec(arch):
    """A spec for a timm name (plain or ``timm:NAME``) or ``tv:NAME``, else None."""
    if arch.startswith(TV_PREFIX):
        name = arch[len(TV_PREFIX) :]
        if name not in _torchvision_names():
            return None
        family = "resnet" if name.startswith(("resnet", "wide_resnet", "resnext")) else "torchvision"
        return BackboneSpec(_torchvision_any(name), None, None, family)
    name = arch[len(TIMM_PREFIX) :] if arch.startswith(TIMM_PREFIX) else arch
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    return BackboneSpec(_timm_any(name), None, None, "timm")


def _unknown(arch):
    names = list(dict.fromkeys(ARCH_NAMES + sorted(ALIASES) + _timm_names()))
    names += [TV_PREFIX + n for n in _torchvision_names()]
    query = arch[len(TIMM_PREFIX) :] if arch.startswith(TIMM_PREFIX) else arch
    close = difflib.get_close_matches(query, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UserError(
        f"unknown architecture '{arch}' (-a/--arch){hint}; the paper's: {', '.join(ARCH_NAMES)}; "
        "or any timm name, or tv:NAME for torchvision (docs/teachers.md)"
    )


def backbone_spec(arch: str) -> BackboneSpec:
    name = ALIASES.get(arch, arch)
    if name in BACKBONES:
        return BACKBONES[name]
    spec = _external_spec(arch)
    if spec is None:
        raise _unknown(arch)
    return spec


def canonical_arch(arch: str) -> str:
    """The name checkpoints record: the zoo's for its aliases, a timm name
    without its ``timm:`` prefix (unless the zoo has the same name)."""
    backbone_spec(arch)
    name = ALIASES.get(arch, arch)
    if name.startswith(TIMM_PREFIX) and name[len(TIMM_PREFIX) :] not in BACKBONES:
        return name[len(TIMM_PREFIX) :]
    return name


def default_image_size(arch: str) -> int:
    """The crop size the original pretrained `arch` at (456 for efficientb5, else 224)."""
    return backbone_spec(arch).image_size


def create_backbone(arch: str, small_images: bool = False) -> Tuple[nn.Module, int]:
    """(model, feature width) for `arch`; the model's head slot is Identity."""
    spec = backbone_spec(arch)
    if spec.head_name is None:
        model, head_name, feat_dim = spec.build(small_images)
    else:
        model, head_name, feat_dim = spec.build(small_images), spec.head_name, spec.feat_dim
        setattr(model, head_name, nn.Identity())
    model.head_name = head_name
    return model, feat_dim


def set_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the backbone's classifier was (``fc``/``classifier``/``head``,
    or a dotted path such as ``head.fc`` for other timm/torchvision models)."""
    _set_submodule(model, model.head_name, head)
    return model


def get_head(model: nn.Module) -> nn.Module:
    return model.get_submodule(model.head_name)


# -- checks before a run: image size, BatchNorm groups ----------------------------

# Families whose zoo builds take any input size (a convolutional stem and
# adaptive pooling): not probed, so most runs pay nothing for the check.
_ANY_SIZE_FAMILIES = ("resnet", "timm-cnn")


def probe_forward(build: Callable[[], nn.Module], size: int) -> Optional[str]:
    """The error a `size` x `size` image raises in the model `build()`
    makes, on one line, or None when it runs (or when this cannot be told).
    The model is built and run on the meta device: shapes only, no weights,
    no arithmetic, so even a large teacher costs a fraction of a second."""
    try:
        with torch.device("meta"):
            model = build()
    except UserError:
        raise
    except Exception:  # some inits read values (meta tensors have none): the run itself will tell
        return None
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    except NotImplementedError:  # an op without a meta kernel
        return None
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return None if "meta" in text else text
    return None


def native_image_size(arch: str) -> Optional[int]:
    """The input size timm built `arch` for (its pretrained config), if it has one."""
    if arch.startswith(TV_PREFIX):
        return None
    try:
        import timm

        cfg = timm.get_pretrained_cfg(arch[len(TIMM_PREFIX) :] if arch.startswith(TIMM_PREFIX) else arch)
    except Exception:
        return None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None


def image_size_problem(arch: str, size: int, small_images: Optional[bool]) -> Optional[str]:
    """Why `arch` cannot run on `size` px images, or None. With
    small_images None (a linear evaluation takes it from the checkpoint)
    only a size that neither stem takes is a problem."""
    spec = backbone_spec(arch)
    if spec.family in _ANY_SIZE_FAMILIES:
        return None
    if small_images is not None:
        return probe_forward(lambda: create_backbone(arch, small_images)[0], size)
    problems = []
    for small in (False, True):
        try:
            problems.append(probe_forward(lambda small=small: create_backbone(arch, small)[0], size))
        except UserError as exc:  # this stem cannot be built at all: the other one decides
            problems.append(str(exc))
    return None if None in problems else problems[0]


def check_image_size(
    arch: str, size: int, small_images: Optional[bool], arch_flag: str = "-a", size_flag: str = "--image-size"
) -> None:
    """One line, before any work, when `arch` cannot take `size` px inputs
    (a transformer with a fixed patch grid, windows the image cannot hold,
    a size that is not a multiple of the patch...), instead of the model's
    own assertion at the first step."""
    problem = image_size_problem(arch, size, small_images)
    if problem is not None:
        raise image_size_error(arch, size, problem, native_image_size(ALIASES.get(arch, arch)), arch_flag, size_flag)


def image_size_error(
    arch: str, size: int, problem: str, native: Optional[int], arch_flag: str, size_flag: str
) -> UserError:
    hint = f" (its native size is {native} px)" if native else ""
    return UserError(
        f"{arch_flag} {arch} cannot take {size} px images ({size_flag} {size}): {problem.rstrip('.')}; "
        f"give {size_flag} a size it accepts{hint}"
    )


def small_bn_group_warning(model: nn.Module, batch: int, bn_splits: int, processes: int) -> Optional[str]:
    """core.checks.bn_group_warning for a model that has BatchNorm layers
    (a transformer's LayerNorms do not care how many images a group holds)."""
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return None
    return bn_group_warning(batch, bn_splits, processes)
