"""--precision, --channels-last, --gpu-aug and the throughput benchmark, on CPU:
the batched augmentation's distribution against torchvision's recipe, its
pixel operations against torchvision's, JPEG decode against PIL, fp32 loss
numerics under bf16 autocast, and tiny end-to-end runs."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from conftest import TINY_PRETRAIN, run
from PIL import Image

from selfsup.core.errors import UserError
from selfsup.data import gpu_augment as G
from selfsup.data import jpeg as J
from selfsup.engine.precision import Precision


# -- distribution of the random parameters -----------------------------------------
def _torchvision_crops(h, w, n, scale=(0.2, 1.0)):
    img = torch.zeros(1, h, w)
    rows = [T.RandomResizedCrop.get_params(img, scale, (3 / 4, 4 / 3)) for _ in range(n)]
    return torch.tensor(rows, dtype=torch.float64)  # top, left, height, width


@pytest.mark.parametrize("h,w", [(375, 500), (64, 48)])
def test_crop_boxes_follow_random_resized_crop(h, w):
    torch.manual_seed(0)
    n = 4000
    b = G.sample_crop_boxes([h] * n, [w] * n).double()
    ours = torch.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], dim=1)
    ref = _torchvision_crops(h, w, n)
    assert (ours[:, :2] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for stats in (
        lambda c: c[:, 2] * c[:, 3] / (h * w),  # area fraction
        lambda c: c[:, 3] / c[:, 2],  # aspect ratio w/h
        lambda c: c[:, 0] / max(h - c[:, 2].min(), 1),  # vertical offset
        lambda c: c[:, 1] / w,
    ):
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        a, r = torch.quantile(stats(ours), q), torch.quantile(stats(ref), q)
        assert torch.allclose(a, r, atol=0.04, rtol=0.04), (a, r)
    area = ours[:, 2] * ours[:, 3] / (h * w)
    assert area.min() > 0.2 - 0.05 and area.max() <= 1.0
    ratio = ours[:, 3] / ours[:, 2]
    assert ratio.min() > 0.75 * 0.9 and ratio.max() < 4 / 3 * 1.1


def test_crop_fallback_is_the_centre_crop():
    # A 10x200 strip: no attempt fits; torchvision takes a centre crop with the ratio clamped.
    b = G.sample_crop_boxes([10], [200])
    top, left, hh, ww = _torchvision_crops(10, 200, 1)[0].tolist()
    assert b[0].tolist() == [left, top, left + ww, top + hh]


def test_parameter_ranges_frequencies_and_independence():
    torch.manual_seed(1)
    n = 20000
    spec = G.moco_spec(True, 224)
    p = G.sample_params(spec, [100] * n, [120] * n)
    for key, freq in [("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)]:
        assert abs(p[key].float().mean().item() - freq) < 0.015, key
    for key, (lo, hi) in [
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.6, 1.4)),
        ("saturation", (0.6, 1.4)),
        ("hue", (-0.1, 0.1)),
        ("sigma", (0.1, 2.0)),
    ]:
        v = p[key]
        assert v.min() >= lo and v.max() <= hi, key
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo), key  # the whole range is used
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.01 * (hi - lo) + 1e-3, key  # uniform: centred
    # Each view's jitter order is a permutation; every op comes first a quarter of the time.
    assert (p["order"].sort(dim=1).values == torch.arange(4)).all()
    first = torch.bincount(p["order"][:, 0], minlength=4).float() / n
    assert (first - 0.25).abs().max() < 0.015
    # Independence between the choices of one view and between views.
    flags = torch.stack(
        [p[k].float() for k in ("jitter", "gray", "blur", "flip")]
        + [p["brightness"], p["hue"], p["sigma"], p["boxes"][:, 0]]
    )
    corr = torch.corrcoef(flags)
    assert (corr - torch.eye(len(flags))).abs().max() < 0.04
    halves = torch.corrcoef(torch.stack([p["brightness"][: n // 2], p["brightness"][n // 2 :]]))
    assert abs(halves[0, 1]) < 0.04
    # The blur range follows the image size, as the CPU pipeline's does.
    small = G.sample_params(G.moco_spec(True, 32), 2000)["sigma"]
    assert small.min() >= 0.1 * 32 / 224 and small.max() <= 2.0 * 32 / 224 and small.max() > 0.27
    # MoCo v1: jitter always (hue 0.4), grayscale first, no blur.
    v1 = G.sample_params(G.moco_spec(False, 32), 1000)
    assert v1["jitter"].all() and not v1["blur"].any() and v1["hue"].abs().max() > 0.35 and "boxes" not in v1


def test_two_views_of_one_image_differ_and_are_normalised():
    torch.manual_seed(2)
    img = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    q, k = G.BatchTwoViews(G.moco_spec(True, 24))([img, img.clone()])
    assert q.shape == k.shape == (2, 3, 24, 24) and q.dtype == torch.float32
    assert not torch.allclose(q, k) and not torch.allclose(q[0], q[1])
    assert torch.isfinite(q).all() and q.min() >= (0 - 0.485) / 0.229 - 1e-4 and q.max() <= (1 - 0.406) / 0.225 + 1e-4


# -- pixel operations against torchvision's ----------------------------------------
def _smooth(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 5, generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def test_crop_resize_identity_and_close_to_resized_crop():
    img = (_smooth() * 255).round().to(torch.uint8)
    full = G.crop_resize([img], torch.tensor([[0.0, 0.0, 64.0, 48.0]]), 48)
    # 48x64 -> 48x48 only squeezes columns; rows are sampled at their centres exactly
    same = G.crop_resize([img], torch.tensor([[8.0, 0.0, 56.0, 48.0]]), 48)
    assert torch.allclose(same[0], img[:, :, 8:56].float() / 255, atol=1e-5)
    x0, y0, x1, y1 = 5, 7, 45, 37
    ours = G.crop_resize([img, img[:, :30]], torch.tensor([[x0, y0, x1, y1], [0, 0, 64, 30]], dtype=torch.float32), 20)
    ref = TF.resized_crop(img.float() / 255, y0, x0, y1 - y0, x1 - x0, [20, 20], antialias=True)
    assert (ours[0] - ref).abs().mean() < 0.01
    ref2 = TF.resize(img[:, :30].float() / 255, [20, 20], antialias=True)
    assert (ours[1] - ref2).abs().mean() < 0.01 and full.shape == (1, 3, 48, 48)


def test_colour_ops_match_torchvision_in_each_views_order():
    x = torch.stack([_smooth(seed=s) for s in range(6)])
    params = {
        "jitter": torch.tensor([True, True, True, True, True, False]),
        "brightness": torch.tensor([0.7, 1.3, 1.0, 0.9, 1.2, 1.4]),
        "contrast": torch.tensor([1.3, 0.6, 1.1, 1.0, 0.8, 0.6]),
        "saturation": torch.tensor([0.8, 1.4, 0.6, 1.2, 1.0, 0.6]),
        "hue": torch.tensor([0.05, -0.1, 0.08, -0.03, 0.0, 0.1]),
        "order": torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(6)]),
    }
    ours = G.color_jitter(x.clone(), params)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in range(6):
        ref = x[i]
        if params["jitter"][i]:
            for op in params["order"][i].tolist():
                ref = fns[op](ref, float(params[names[op]][i]))
        assert torch.allclose(ours[i], ref, atol=2e-3), i
    gray = G._gray(x[:2])
    assert torch.allclose(gray, TF.rgb_to_grayscale(x[:2], 3), atol=5e-4)


def test_blur_matches_a_gaussian_of_the_drawn_sigma():
    x = _smooth(32, 32).unsqueeze(0).repeat(2, 1, 1, 1)
    x[:, :, 10:20, 10:20] = 1.0
    sig = torch.tensor([0.5, 1.7])
    ours = G.gaussian_blur(x.clone(), sig, 2.0)
    for i in range(2):
        ref = TF.gaussian_blur(x[i], [13, 13], [float(sig[i])] * 2)
        assert (ours[i] - ref).abs().max() < 2e-3


# -- JPEG bytes -------------------------------------------------------------------
def _write(path, array, fmt, **kw):
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def test_decode_matches_pil_and_other_formats_fall_back(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (np.asarray(_smooth(60, 80).permute(1, 2, 0)) * 255).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
    jpg = _write(str(tmp_path / "a.jpg"), rgb, "JPEG", quality=90)
    png = _write(str(tmp_path / "b.png"), rgb, "PNG")
    gray = _write(str(tmp_path / "c.jpg"), rgb[:, :, 0], "JPEG", quality=90)
    payloads = [J.read_encoded(p) for p in (jpg, png, gray)]
    assert [k for _, k, _ in payloads] == ["jpeg", "pixels", "jpeg"]
    out = J.decode_batch(payloads, "cpu")
    pil = torch.from_numpy(np.asarray(Image.open(jpg).convert("RGB"))).permute(2, 0, 1)
    assert out[0].shape == (3, 60, 80) and (out[0].int() - pil.int()).abs().float().mean() < 1.0
    assert torch.equal(out[1], torch.from_numpy(rgb).permute(2, 0, 1))
    assert out[2].shape == (3, 60, 80) and torch.equal(out[2][0], out[2][1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 20)
    with pytest.raises(UserError, match="bad.jpg"):
        J.decode_batch([J.read_encoded(str(bad))], "cpu")


def test_worker_crops_then_batched_colour(tmp_path):
    spec = G.moco_spec(True, 16)
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    pair = G.crop_pair(img, spec)
    assert pair.shape == (2, 3, 16, 16) and pair.dtype == torch.uint8
    q, k = G.CroppedTwoViews(spec)(torch.stack([pair, pair]))
    assert q.shape == k.shape == (2, 3, 16, 16) and torch.isfinite(q).all()


# -- numerics under autocast --------------------------------------------------------
def _tiny_moco(teacher=False):
    import types

    from selfsup.methods.disco import DisCo
    from selfsup.methods.moco import MoCo
    from selfsup.models.encoders import build_query_encoder
    from selfsup.models.teacher import EmbeddingTeacher

    ns = types.SimpleNamespace(arch="resnet18", small_images=True, moco_dim=16, mlp=True, hidden=-1)
    torch.manual_seed(0)
    if not teacher:
        return MoCo(build_query_encoder(ns), dim=16, K=32, T=0.2, bn_splits=2)
    return DisCo(build_query_encoder(ns), EmbeddingTeacher(build_query_encoder(ns)), dim=16, K=32, T=0.2, bn_splits=2)


@pytest.mark.parametrize("teacher", [False, True])
def test_bf16_step_keeps_losses_and_queue_fp32(teacher, torch_one_thread):
    prec = Precision("bf16", torch.device("cpu"), channels_last=True)
    assert prec.dtype == torch.bfloat16 and not prec.scaler.is_enabled()
    model = prec.model(_tiny_moco(teacher)).train()
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x = [prec.inputs(torch.randn(8, 3, 16, 16)) for _ in range(2)]
    with prec.autocast():
        out = model(*x)
    assert out["logits"].dtype == torch.float32 and out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    if teacher:
        assert out["loss_mse"].dtype == torch.float32 and torch.isfinite(out["loss_mse"])
    prec.backward_step(out["loss"], opt)
    assert model.queue.dtype == torch.float32 and int(model.queue_ptr) == 8
    assert torch.allclose(model.queue[:, :8].norm(dim=0), torch.ones(8), atol=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert Precision("fp16", torch.device("cpu")).scaler.is_enabled()
    assert Precision("fp32", torch.device("cpu")).dtype is None
    with pytest.raises(UserError):
        Precision("fp8", torch.device("cpu"))


# -- scripts ----------------------------------------------------------------------------
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # 2 busy cores: oversubscribed threads make tiny steps 5x slower


def test_main_moco_fast_flags_one_tiny_epoch(tiny_data, tmp_path):
    ck = tmp_path / "ck"
    r = run(
        f"python3 moco/main_moco.py {tiny_data} -a resnet18 --aug-plus --mlp {TINY_PRETRAIN} "
        f"--precision bf16 --channels-last --gpu-aug --ckpt-dir {ck}",
        env=ONE_THREAD,
    )
    assert r.returncode == 0, r.stdout
    assert "precision bf16, channels_last, GPU data pipeline" in r.stdout
    assert (ck / "checkpoint_0000.pth.tar").exists()
    # the same, with the crops made in the workers, then the linear evaluation in bf16
    r = run(
        f"python3 moco/main_moco.py {tiny_data} -a resnet18 --aug-plus --mlp {TINY_PRETRAIN} "
        f"--gpu-aug --gpu-aug-decode workers --ckpt-dir {tmp_path / 'ck2'}",
        env=ONE_THREAD,
    )
    assert r.returncode == 0, r.stdout
    r = run(
        f"python3 moco/main_lincls.py {tiny_data} -a resnet18 --pretrained {ck}/checkpoint_0000.pth.tar "
        f"--epochs 1 -b 30 --image-size 16 -j 0 -p 1 --precision bf16 --channels-last "
        f"--ckpt-dir {tmp_path / 'lin'}",
        env=ONE_THREAD,
    )
    assert r.returncode == 0, r.stdout
    assert "Acc@1" in r.stdout


def test_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    r = run(f"python3 benchmarks/throughput.py --tiny --models disco_effb0_r50 --out {out}", timeout=300)
    assert r.returncode == 0, r.stdout
    text = out.read_text()
    assert "no GPU (CPU run)" in text and text.count("| DisCo EfficientNet-B0 <- ResNet-50 |") == 3
    assert "DisCo EfficientNet-B0 <- ResNet-50, fast vs original: synthetic x" in text and "end to end x" in text
    r = run("python3 benchmarks/throughput.py --models nope")
    assert r.returncode == 2 and "unknown 'nope'" in r.stdout
