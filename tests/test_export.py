"""tools/export.py: every family of checkpoint out to timm / torchvision
(safetensors), ONNX and TorchScript, and the files read back wherever a
checkpoint is read (--pretrained, --teacher, the detection converter).

The checkpoints are built here from random weights in each layout (tests/
layouts.py for the official ones), on tiny models; each export is loaded the
way a user would (torchvision's builder, timm.create_model, onnxruntime,
torch.jit.load) and compared with the backbone selfsup itself reads from the
checkpoint."""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil

import layouts as L
import pytest
import torch
import torchvision
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models.backbones import create_backbone, set_head
from selfsup.models.encoders import load_backbone
from selfsup.models.heads import projection_head
from selfsup.models.teacher import load_teacher

pytestmark = pytest.mark.usefixtures("torch_one_thread")

_SCRIPTS = {}


def script(path):
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location("script_" + path.replace("/", "_")[:-3], os.path.join(REPO, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def export(capsys, *argv):
    """tools/export.py in this process: (its printed lines, the load line)."""
    script("tools/export.py").main([str(a) for a in argv])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "=> load it with:", lines
    return lines, lines[-1]


def one_error(capsys, *argv):
    """tools/export.py stops with status 2 and one `error:` line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        script("tools/export.py").main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def run_line(line):
    scope = {}
    exec(line, scope)
    return scope["model"].eval()


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def images(size, n=2, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def close(a, b):
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def nontrivial_bn(state):
    """Running statistics away from (0, 1), so eval mode is really compared."""
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = 0.5 + torch.rand_like(v)
        elif k.endswith("running_mean"):
            state[k] = 0.1 * torch.randn_like(v)
    return state


def encoder_state(arch, small, hidden=64, out=16):
    """A query encoder of `arch` with a MoCo-v2 MLP head: its state dict."""
    model, width = create_backbone(arch, small)
    set_head(model, projection_head(width, out, mlp=True, hidden=hidden))
    return nontrivial_bn({k: v.clone() for k, v in model.state_dict().items()})


def pretraining_checkpoint(arch, small, teacher=None, **extra):
    """Our MoCo/DisCo layout: encoder_q, encoder_k, queue, teacher (module.teacher.encoder.*)."""
    q = encoder_state(arch, small)
    state = {f"module.encoder_q.{k}": v for k, v in q.items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in q.items()})
    state["module.queue"] = torch.randn(16, 8)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    if teacher is not None:
        state.update({f"module.teacher.encoder.{k}": v for k, v in encoder_state(teacher, small).items()})
    return {"epoch": 3, "arch": arch, "state_dict": state, "optimizer": {}, "small_images": small, **extra}


def original_disco_student(student, teacher):
    """The original DisCo/moco/builder.py's checkpoint: encoder_q/k (the student,
    its MLP in `classifier`), teacher_encoder_q/k (the teacher, MLP in `fc`), queue."""
    s, t = encoder_state(student, False), encoder_state(teacher, False)
    state = {f"module.encoder_q.{k}": v for k, v in s.items()}
    state.update({f"module.encoder_k.{k}": v for k, v in s.items()})
    state.update({f"module.teacher_encoder_q.{k}": v for k, v in t.items()})
    state.update({f"module.teacher_encoder_k.{k}": v for k, v in t.items()})
    state["module.queue"] = torch.randn(16, 8)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 199, "arch": student, "state_dict": state, "optimizer": {}}


def dino_training_checkpoint():
    """DINO's checkpoint.pth (tests/layouts.py's layout) with a small prototype layer."""
    backbone = L.vit_state()
    head = L.dino_head_state(384, out_dim=16)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher.update({f"head.{k}": v for k, v in head.items()})
    return {
        "student": {f"module.{k}": v for k, v in teacher.items()},
        "teacher": teacher,
        "optimizer": {},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=16, use_bn_in_head=False),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint files of each family, written once for the module."""
    root = tmp_path_factory.mktemp("export_inputs")
    torch.manual_seed(0)
    made = {
        "moco_r18": L.moco_v2_checkpoint("resnet18", hidden=64, queue=8),
        "disco_r18_small": pretraining_checkpoint(
            "resnet18", True, teacher="resnet18", image_size=16, run={"method": "build_disco"}
        ),
        "disco_original_eff": original_disco_student("test_efficientnet", "resnet18"),
        "vit_small": pretraining_checkpoint("vit_tiny", True, image_size=16, run={"method": "build_moco"}),
        "swav_r18": L.swav_release_state("resnet18", hidden=64, prototypes=10),
        "dino_vits16": dino_training_checkpoint(),
    }
    paths = {}
    for name, obj in made.items():
        paths[name] = root / f"{name}.pth.tar"
        torch.save(obj, paths[name])
    lincls = load_backbone("resnet18", str(paths["moco_r18"])).state_dict()
    state = {f"module.{k}": v for k, v in lincls.items()}
    state.update({"module.fc.weight": torch.randn(10, 512), "module.fc.bias": torch.zeros(10)})
    paths["lincls_r18"] = root / "lincls_r18.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": state, "best_acc1": 50.0}, paths["lincls_r18"])
    yield paths
    shutil.rmtree(root, ignore_errors=True)  # about 0.5 GB (the DINO ViT-S/16 training checkpoint)


# -- one export per family: loads in its library, gives the checkpoint's features -----------


def test_torchvision_resnet_loads_missing_only_the_classifier(files, tmp_path, capsys):
    out = tmp_path / "r18.safetensors"
    lines, line = export(capsys, files["moco_r18"], "--out", out)
    assert line.startswith("import torch, torchvision;") and "torchvision.models.resnet18()" in line
    state = load_file(str(out))
    model = torchvision.models.resnet18()
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    assert not any(k.startswith(("encoder", "queue", "fc.", "module.")) for k in state)
    x = images(64)
    ours = load_backbone("resnet18", str(files["moco_r18"])).eval()
    with torch.no_grad():
        close(run_line(line)(x), ours(x))
    meta = metadata(out)
    digest = hashlib.sha256(open(files["moco_r18"], "rb").read()).hexdigest()
    assert meta["library"] == "torchvision" and meta["model_name"] == "resnet18" and meta["arch"] == "resnet18"
    assert meta["feature_dim"] == "512" and meta["image_size"] == "224" and meta["small_images"] == "false"
    assert meta["method"] == "moco" and meta["epoch"] == "200" and meta["source_sha256"] == digest
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and meta["head"] == "none"
    assert "max abs difference 0.00e+00" in lines[2]


def test_small_images_resnet_with_head_rebuilds_its_stem(files, tmp_path, capsys):
    out = tmp_path / "r18s.safetensors"
    _, line = export(capsys, files["disco_r18_small"], "--out", out, "--with-head")
    assert "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)" in line
    assert "model.maxpool = torch.nn.Identity()" in line
    state = load_file(str(out))
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert {k for k in state if k.startswith("projection_head.")} == {
        f"projection_head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    assert not any("teacher" in k or "encoder_k" in k for k in state)
    meta = metadata(out)
    assert meta["small_images"] == "true" and meta["image_size"] == "16" and meta["method"] == "disco"
    x = images(16)
    with torch.no_grad():
        close(run_line(line)(x), load_backbone("resnet18", str(files["disco_r18_small"])).eval()(x))


def test_original_disco_student_loads_in_timm_through_its_file_route(files, tmp_path, capsys):
    """The original's student files also hold teacher_encoder_q/k: only the student's encoder_q leaves."""
    import timm

    out = tmp_path / "eff.safetensors"
    _, line = export(capsys, files["disco_original_eff"], "--out", out)
    assert line == (
        'import timm; model = timm.create_model("test_efficientnet", pretrained=True, '
        f'pretrained_cfg_overlay=dict(file="{out}"), num_classes=0)'
    )
    state = load_file(str(out))
    assert set(state) == set(timm.create_model("test_efficientnet", num_classes=0).state_dict())
    x = images(64)
    with torch.no_grad():
        close(run_line(line)(x), load_backbone("test_efficientnet", str(files["disco_original_eff"])).eval()(x))
    assert metadata(out)["method"] == "disco" and metadata(out)["library"] == "timm"


def test_vit_with_small_images_stem_and_its_torchscript(files, tmp_path, capsys):
    import timm

    out = tmp_path / "vit.safetensors"
    _, line = export(capsys, files["vit_small"], "--out", out)
    assert '"vit_tiny_patch16_224"' in line and "img_size=32, patch_size=4" in line
    kwargs = dict(img_size=32, patch_size=4, dynamic_img_size=True)
    assert set(load_file(str(out))) == set(
        timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs).state_dict()
    )
    x = images(16)
    ours = load_backbone("vit_tiny", str(files["vit_small"])).eval()
    with torch.no_grad():
        reference = ours(x)
        close(run_line(line)(x), reference)
    ts = tmp_path / "vit.pt"
    _, line = export(capsys, files["vit_small"], "--out", ts)
    assert line.startswith(f'import torch; model = torch.jit.load("{ts}")')
    with torch.no_grad():
        close(torch.jit.load(str(ts))(x), reference)


def test_onnx_runs_any_batch_and_keeps_the_head_as_a_second_output(files, tmp_path, capsys):
    import onnx
    import onnxruntime

    out = tmp_path / "eff.onnx"
    _, line = export(capsys, files["disco_original_eff"], "--out", out, "--with-head", "--image-size", "32")
    assert "onnxruntime.InferenceSession" in line
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["arch"] == "test_efficientnet" and props["head"] == "projection_head"
    assert all(o.version >= 17 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    encoder = load_backbone("test_efficientnet", str(files["disco_original_eff"])).eval()
    state = ck.strip_prefix(torch.load(files["disco_original_eff"])["state_dict"], "module.encoder_q.classifier.")
    head = projection_head(encoder.num_features, 16, mlp=True, hidden=64)
    head.load_state_dict(state)
    for n in (1, 5):  # the batch axis is dynamic
        x = images(32, n)
        features, projection = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            close(torch.from_numpy(features), encoder(x))
            close(torch.from_numpy(projection), head(encoder(x)))


def test_swav_layout_with_head_is_the_same_teacher(files, tmp_path, capsys):
    from selfsup.models.swav import load_swav_encoder

    out = tmp_path / "swav.safetensors"
    _, line = export(capsys, files["swav_r18"], "-a", "resnet18", "--out", out, "--with-head", "--image-size", "32")
    state = load_file(str(out))
    assert "projection_head.1.running_mean" in state and not any(k.startswith("prototypes") for k in state)
    assert metadata(out)["method"] == "swav"
    x = images(32)
    reference = load_swav_encoder("resnet18", str(files["swav_r18"]), feat_dim=128).eval()
    teacher = load_teacher("resnet18", str(out))
    with torch.no_grad():
        close(teacher(x), reference(x))
        close(run_line(line)(x), reference.backbone(x))


def test_dino_training_checkpoint_says_its_release_and_keeps_the_bottleneck(files, tmp_path, capsys):
    out = tmp_path / "dino.safetensors"
    _, line = export(capsys, files["dino_vits16"], "--out", out, "--with-head", "--image-size", "32")
    meta = metadata(out)
    assert meta["arch"] == "dino_vits16" and meta["method"] == "dino" and meta["head_activation"] == "gelu"
    assert meta["model_name"] == "vit_small_patch16_224" and meta["epoch"] == "100"
    state = load_file(str(out))
    assert "projection_head.4.weight" in state and not any("last_layer" in k for k in state)
    x = images(32)
    with torch.no_grad():
        close(load_teacher("dino_vits16", str(out))(x), load_teacher("dino_vits16", str(files["dino_vits16"]))(x))
        trunk = set_head(load_teacher("dino_vits16", str(files["dino_vits16"])).net, torch.nn.Identity())
        close(run_line(line)(x), trunk(x))


def test_an_export_exports_again(files, tmp_path, capsys):
    first = tmp_path / "r18s.safetensors"
    export(capsys, files["disco_r18_small"], "--out", first)
    again = tmp_path / "r18s.pt"
    lines, _ = export(capsys, first, "--out", again)
    assert "export of tools/export.py" in lines[0] and "method disco" in lines[0]
    x = images(16)
    with torch.no_grad():
        close(torch.jit.load(str(again))(x), load_backbone("resnet18", str(files["disco_r18_small"])).eval()(x))


# -- read back: --pretrained, --teacher, the detection converter ----------------------------


def lincls(tiny_data, pretrained, folder):
    from moco_scripts import main_lincls

    from selfsup.engine.lincls import run_lincls
    from selfsup.engine.runtime import launch

    args = main_lincls.parse_args(
        ["-a", "resnet18", "--lr", "3.0", "-b", "8", "--epochs", "1", "--image-size", "16", "-j", "0", "-p", "100"]
        + ["--seed", "0", "--pretrained", str(pretrained), "--ckpt-dir", str(folder), tiny_data]
    )
    launch(run_lincls, args)
    return torch.load(folder / "checkpoint.pth.tar", weights_only=True)["state_dict"]


def test_pretrained_safetensors_gives_the_same_linear_evaluation(files, tmp_path, tiny_data, capsys):
    out = tmp_path / "r18s.safetensors"
    export(capsys, files["disco_r18_small"], "--out", out)
    from_pth = lincls(tiny_data, files["disco_r18_small"], tmp_path / "a")
    from_file = lincls(tiny_data, out, tmp_path / "b")
    assert from_pth.keys() == from_file.keys()
    for k in ("module.fc.weight", "module.fc.bias"):
        assert torch.equal(from_pth[k], from_file[k]), k
    assert not torch.equal(from_pth["module.fc.weight"], torch.zeros_like(from_pth["module.fc.weight"]))


def test_swav_eval_and_detection_converter_read_the_file(files, tmp_path, capsys):
    from selfsup.detection.convert import convert_file
    from selfsup.engine.swav_eval import load_frozen_backbone

    out = tmp_path / "r18.safetensors"
    export(capsys, files["moco_r18"], "--out", out)
    models = [
        load_frozen_backbone(argparse.Namespace(arch="resnet18", pretrained=str(p), small_images=None))[0]
        for p in (files["moco_r18"], out)
    ]
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pickles = [convert_file(str(p), str(tmp_path / f"{i}.pkl")).model for i, p in enumerate((files["moco_r18"], out))]
    assert pickles[0].keys() == pickles[1].keys() and all((pickles[0][k] == pickles[1][k]).all() for k in pickles[0])


def test_disco_takes_a_with_head_export_as_its_teacher(files, tmp_path, tiny_data, capsys):
    from selfsup.methods.disco import build_disco

    out = tmp_path / "teacher.safetensors"
    export(capsys, files["disco_r18_small"], "--out", out, "--with-head")
    spec = importlib.util.spec_from_file_location("disco_main", os.path.join(REPO, "DisCo", "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [tiny_data, "-a", "resnet18", "--teacher_arch", "resnet18", "--teacher", str(out), "--mlp"]
    args = module.parse_args(argv + ["--image-size", "16", "--small-images", "-b", "4", "--moco-k", "8"])
    model = build_disco(args)
    x = images(16)
    reference = load_teacher("resnet18", str(files["disco_r18_small"]))
    with torch.no_grad():
        close(model.teacher.eval()(x), reference(x))
    assert args.moco_dim == 16  # sized to the exported head's width


# -- bad input: one line each ----------------------------------------------------------------


def test_a_file_with_no_backbone(tmp_path, capsys):
    path = tmp_path / "eval_linear.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": {"module.linear.weight": torch.zeros(10, 512)}}, path)
    err = one_error(capsys, path, "--out", tmp_path / "x.safetensors")
    assert "holds no backbone weights of -a resnet18" in err and "linear.weight" in err


def test_an_arch_the_file_does_not_hold(files, tmp_path, capsys):
    err = one_error(capsys, files["moco_r18"], "-a", "resnet34", "--out", tmp_path / "x.safetensors")
    assert "does not match -a resnet34 (it was trained as 'resnet18')" in err


def test_an_unknown_format(files, tmp_path, capsys):
    err = one_error(capsys, files["moco_r18"], "--format", "tflite", "--out", tmp_path / "x.tflite")
    assert "--format" in err and "tflite" in err and "safetensors" in err


def test_an_output_that_cannot_be_written(files, tmp_path, capsys):
    err = one_error(capsys, files["moco_r18"], "--out", tmp_path / "missing" / "x.safetensors")
    assert "its folder" in err and "does not exist" in err
    err = one_error(capsys, files["moco_r18"], "--out", "/proc/selfsup-export-test.safetensors")
    assert "cannot be written" in err and not os.path.exists("/proc/selfsup-export-test.safetensors")


def test_output_is_the_input(files, tmp_path, capsys):
    victim = tmp_path / "student.safetensors"
    export(capsys, files["moco_r18"], "--out", victim)
    before = victim.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(victim)
    for out in (victim, link):
        err = one_error(capsys, victim, "--out", out, "--force")
        assert "is the input checkpoint" in err and "nothing was written" in err
    assert victim.read_bytes() == before


def test_a_lincls_checkpoint_asked_with_head(files, tmp_path, capsys):
    err = one_error(capsys, files["lincls_r18"], "--out", tmp_path / "x.safetensors", "--with-head")
    assert "holds a classifier under fc.*, not a projection head" in err and "without --with-head" in err


def test_an_existing_output_needs_force(files, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"the user's file")
    err = one_error(capsys, files["moco_r18"], "--out", out)
    assert "exists" in err and "--force" in err and out.read_bytes() == b"the user's file"
    export(capsys, files["moco_r18"], "--out", out, "--force")
    assert ck.is_safetensors(str(out))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--format", "onnx", "--out", "{tmp}/x.safetensors"], "names a safetensors file but --format is onnx"),
        (["--out", "{tmp}/x.bin"], "must end in .safetensors"),
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{tmp}/x.safetensors", "-a", "no_such_net"], "unknown architecture 'no_such_net'"),
        (["--out", "{tmp}/x.safetensors", "--image-size", "0"], "--image-size 0"),
    ],
)
def test_flags_that_do_not_fit(files, tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert needle in one_error(capsys, files["moco_r18"], *argv)


def test_files_that_do_not_say_what_they_are(files, tmp_path, capsys):
    out = ["--out", tmp_path / "x.safetensors"]
    assert "does not say its arch (no 'arch' entry): give -a ARCH" in one_error(capsys, files["swav_r18"], *out)
    err = one_error(capsys, files["dino_vits16"], "-a", "resnet50", *out)
    assert "is a DINO training checkpoint" in err and "dino_vits16" in err
    err = one_error(capsys, tmp_path / "missing.pth.tar", *out)
    assert "does not exist" in err


def test_a_pickle_named_safetensors_is_never_unpickled(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ck.UNSAFE_LOAD_ENV, raising=False)  # --unsafe-load sets it: unset again afterwards

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    import pickle

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    for unsafe in ([], ["--unsafe-load"]):
        err = one_error(capsys, path, "--out", tmp_path / "x.safetensors", *unsafe)
        assert "is not a safetensors file" in err
    assert not (tmp_path / "ran").exists()


def test_onnx_without_onnxruntime_names_the_extra(files, tmp_path, capsys, monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    err = one_error(capsys, files["moco_r18"], "--out", tmp_path / "x.onnx")
    assert "needs onnxruntime" in err and "selfsup[export]" in err and not (tmp_path / "x.onnx").exists()


def test_teacher_files_without_head_or_of_another_arch(files, tmp_path, capsys):
    out = tmp_path / "r18.safetensors"
    export(capsys, files["disco_r18_small"], "--out", out)
    with pytest.raises(UserError) as e:
        load_teacher("resnet18", str(out))
    assert "holds no projection head" in str(e.value) and "tools/export.py --with-head" in str(e.value)
    with pytest.raises(UserError) as e:
        load_teacher("resnet50", str(out))
    assert "holds a resnet18 backbone" in str(e.value) and "not --teacher_arch resnet50" in str(e.value)
    foreign = tmp_path / "timm.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(foreign))
    with pytest.raises(UserError) as e:
        load_teacher("resnet18", str(foreign))
    assert "without the metadata of tools/export.py" in str(e.value)


def test_a_truncated_safetensors_file(files, tmp_path, capsys):
    out = tmp_path / "r18.safetensors"
    export(capsys, files["moco_r18"], "--out", out)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(out.read_bytes()[:4096])
    err = one_error(capsys, cut, "--out", tmp_path / "y.safetensors")
    assert "is a truncated safetensors file" in err and "the file has 4096" in err
    cut.write_bytes(out.read_bytes()[:-1000])  # the header whole, the tensors not
    with pytest.raises(UserError) as e:
        ck.load_file(str(cut), "--pretrained checkpoint")
    assert "--pretrained checkpoint" in str(e.value) and "is not a readable safetensors file" in str(e.value)


def test_safetensors_reading_never_imports_pickle_machinery(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r18.safetensors"
    export(capsys, files["moco_r18"], "--out", out)
    renamed = tmp_path / "r18.weights"  # told by its header, not its name
    renamed.write_bytes(out.read_bytes())

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    for path in (out, renamed):
        ckpt = ck.load_file(str(path), "--pretrained checkpoint", unsafe=True)
        assert ckpt["arch"] == "resnet18" and "module.encoder_q.layer4.1.bn2.weight" in ckpt["state_dict"]
