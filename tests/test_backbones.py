import pytest
import torch

from selfsup.core.errors import UserError
from selfsup.models.backbones import ARCH_NAMES, create_backbone, set_head
from selfsup.models.heads import projection_head

WIDTHS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "SWAVresnet50": 2048,
    "DCresnet50": 2048,
    "SELAresnet50": 2048,
    "resnet50w2": 4096,
    "efficientb0": 1280,
    "efficientb1": 1280,
    "efficientb5": 2048,
    "mobilenetv3": 1280,
    "vit_tiny": 192,
    "xcit_tiny": 192,
}


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_arch_gives_features_of_its_width(arch):
    model, dim = create_backbone(arch, small_images=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert dim == WIDTHS[arch]
    assert out.shape == (2, dim)


def test_unknown_arch_names_the_known_ones():
    with pytest.raises(UserError) as e:
        create_backbone("resnet9000")
    assert "resnet9000" in str(e.value) and "efficientb0" in str(e.value) and "\n" not in str(e.value)


def test_small_images_mode_keeps_resolution_in_the_stem():
    big, _ = create_backbone("resnet18", small_images=False)
    small, _ = create_backbone("resnet18", small_images=True)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    eff, _ = create_backbone("efficientb0", small_images=True)
    assert eff.conv_stem.stride == (1, 1)


def test_resnet50w2_has_swav_widths():
    """SwAV's RN50x2 doubles every width, the stem too (torchvision's
    wide_resnet50_2 does not)."""
    model, dim = create_backbone("resnet50w2")
    sd = model.state_dict()
    assert sd["conv1.weight"].shape == (128, 3, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (128, 128, 1, 1)
    assert sd["layer1.0.conv3.weight"].shape == (512, 128, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (512, 128, 1, 1)
    assert sd["layer4.2.conv3.weight"].shape == (4096, 1024, 1, 1)
    assert dim == 4096


@pytest.mark.parametrize(
    "mlp,hidden,keys,shapes",
    [
        (False, -1, ["fc.weight", "fc.bias"], [(128, 512)]),
        (True, -1, ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"], [(512, 512), (128, 512)]),
        (True, 0, ["fc.0.weight", "fc.0.bias"], [(128, 512)]),  # Sequential(Linear), as orig moco/moco/builder.py:45-47
        (True, 1280, ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"], [(1280, 512), (128, 1280)]),
    ],
)
def test_projection_head_keys_follow_mlp_and_hidden(mlp, hidden, keys, shapes):
    model, dim = create_backbone("resnet18", True)
    set_head(model, projection_head(dim, 128, mlp, hidden))
    head_keys = [k for k in model.state_dict() if k.startswith("fc.")]
    assert head_keys == keys
    weights = [v.shape for k, v in model.state_dict().items() if k.startswith("fc.") and k.endswith("weight")]
    assert [tuple(s) for s in weights] == shapes


def test_head_goes_into_classifier_for_efficientnet():
    model, dim = create_backbone("efficientb0", True)
    set_head(model, projection_head(dim, 128, True, 2048))
    assert "classifier.0.weight" in model.state_dict()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_negative_hidden_other_than_minus_one_is_refused():
    with pytest.raises(UserError):
        projection_head(512, 128, True, -5)
