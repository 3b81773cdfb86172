"""Students the paper never used: any timm name or tv:NAME, through
pretraining -> DisCo -> linear evaluation, and an unknown name in one line."""

import importlib.util
import os

import pytest
import torch
import torch.nn as nn
from conftest import REPO, run
from moco_scripts import main_lincls, main_moco

from selfsup.core.errors import UserError
from selfsup.engine.lincls import run_lincls
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco
from selfsup.models.backbones import create_backbone, set_head

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = ["-b", "8", "--moco-k", "16", "--image-size", "32", "-j", "0", "-p", "100", "--seed", "0", "--epochs", "1"]


def _disco_main():
    spec = importlib.util.spec_from_file_location("disco_main_any", os.path.join(REPO, "DisCo", "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _classifier(arch):
    """(slot, input width) of the model's classifier, found here independently:
    timm's pretrained_cfg names it; torchvision's is its last 1000-way Linear."""
    if arch.startswith("tv:"):
        import torchvision

        model = torchvision.models.get_model(arch[3:], weights=None)
        name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    else:
        import timm

        model = timm.create_model(arch, pretrained=False)
        name = model.pretrained_cfg["classifier"]
    return name, model.get_submodule(name).in_features


@pytest.mark.parametrize(
    "arch,small",
    [("convnext_atto", False), ("resnet18d", True), ("mobilenetv4_conv_small", True), ("tv:resnet18", False)],
)
def test_any_student_pretrains_distils_and_evaluates(arch, small, tiny_data, tmp_path):
    slot, width = _classifier(arch)
    flags = TINY + (["--small-images"] if small else [])
    pre = tmp_path / "pre"
    launch(
        lambda a: run_pretraining(a, build_moco),
        main_moco.parse_args(["-a", arch, "--mlp", "--resume", "", "--ckpt-dir", str(pre), tiny_data] + flags),
    )
    teacher = str(pre / "checkpoint_0000.pth.tar")
    sd = torch.load(teacher, weights_only=False)["state_dict"]
    # The projection head sits where the classifier was, fed by its width.
    assert sd[f"module.encoder_q.{slot}.0.weight"].shape == (width, width)

    # DisCo: the same arch as student, and the MoCo-v2 checkpoint of it as the teacher.
    disco = _disco_main()
    from selfsup.methods.disco import build_disco

    launch(
        lambda a: run_pretraining(a, build_disco),
        disco.parse_args(
            [
                "-a",
                arch,
                "--teacher_arch",
                arch,
                "--teacher",
                teacher,
                "--mlp",
                "--ckpt-dir",
                str(tmp_path / "disco"),
                tiny_data,
            ]
            + flags
        ),
    )
    student = str(tmp_path / "disco" / "checkpoint_0000.pth.tar")
    dsd = torch.load(student, weights_only=False)["state_dict"]
    assert dsd[f"module.encoder_q.{slot}.0.weight"].shape == (2048, width)  # DisCo's --hidden 2048

    args = main_lincls.parse_args(
        ["-a", arch, "--pretrained", student, "--ckpt-dir", str(tmp_path / "lin"), "--lr", "1.0", tiny_data]
        + [f for f in TINY if f not in ("--moco-k", "16")]
    )
    result = launch(run_lincls, args)
    assert 0.0 <= result["acc1"] <= 100.0
    best = torch.load(tmp_path / "lin" / "model_best.pth.tar", weights_only=False)["state_dict"]
    assert best[f"module.{slot}.weight"].shape == (10, width)
    for k, v in best.items():  # the frozen backbone is the DisCo student's
        name = k[len("module.") :]
        if not name.startswith(f"{slot}."):
            assert torch.equal(v, dsd["module.encoder_q." + name]), name


def test_small_images_builds_fixed_size_transformers_for_32_px():
    model, width = create_backbone("xcit_tiny_12_p16_224", small_images=True)
    assert width == 192 and model.patch_embed.img_size == (32, 32)
    vit, _ = create_backbone("vit_small_patch16_224", small_images=True)
    with torch.no_grad():  # dynamic size: 32 to 64 px crops
        assert vit.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 384)
    rn, _ = create_backbone("tv:resnet18", small_images=True)
    assert rn.conv1.stride == (1, 1) and isinstance(rn.maxpool, nn.Identity)
    set_head(rn, nn.Linear(512, 7))
    assert rn.fc.out_features == 7


def test_unknown_name_is_one_line_with_close_matches():
    with pytest.raises(UserError) as e:
        create_backbone("convnext_atoo")
    msg = str(e.value)
    assert "\n" not in msg and "convnext_atto" in msg and "tv:NAME" in msg
    with pytest.raises(UserError) as e:
        create_backbone("tv:mobilenet_v3_smal")
    assert "tv:mobilenet_v3_small" in str(e.value)


def test_swav_pretrains_and_evaluates_a_timm_student(tiny_data, tmp_path):
    """The SwAV scripts take the same names: main_swav.py, then eval_linear.py on its checkpoint."""
    swav = (
        f"python3 swav-master/main_swav.py --arch resnet18d --small_images true --size_crops 16 --nmb_crops 2 "
        f"--min_scale_crops 0.14 --max_scale_crops 1 --nmb_prototypes 10 --workers 0 --batch_size 30 --epochs 1 "
        f"--data_path {tiny_data}/train --dump_path {tmp_path}"
    )
    r = run(swav)
    assert r.returncode == 0, r.stdout[-2000:]
    r = run(
        f"python3 swav-master/eval_linear.py --arch resnet18d --pretrained {tmp_path}/checkpoints/ckp-0.pth "
        f"--image_size 16 --workers 0 --epochs 1 --data_path {tiny_data} --dump_path {tmp_path}/lin"
    )
    assert r.returncode == 0, r.stdout[-2000:]
    assert "linear evaluation done" in r.stdout
