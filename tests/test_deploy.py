"""benchmarks/deploy.py on one tiny setting: its counts against torchvision's
own published figures, every runtime checked and timed, the table written;
bad flags are one line."""

import importlib.util
import os

import pytest
from conftest import REPO

from selfsup.core.errors import UserError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def deploy():
    spec = importlib.util.spec_from_file_location("deploy_bench", os.path.join(REPO, "benchmarks", "deploy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet18_counts_match_torchvision_and_every_runtime_is_timed(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "deploy.md"
    flags = ["--models", "resnet18", "--batches", "1", "--threads", "1", "--repeats", "2", "--min-sample", "0.01"]
    rows = deploy().main([*flags, "--image-size", "32", "--out", str(out)])
    (row,) = rows
    # torchvision's model card for resnet18: 11,689,512 parameters with the
    # 1000-class fc, 1.81 GFLOPS (multiply-adds) at 224 px; ours counts 2 per multiply-add.
    assert row["params_with_fc"] == 11_689_512 and row["params"] == 11_689_512 - 513_000
    assert abs(row["flops"] / 2 / 1.814e9 - 1) < 0.01, row["flops"]
    runtimes = {k[2] for k in row["latency"]}
    assert runtimes == {"eager", "torchscript", "onnxruntime"}
    for seconds, share in row["latency"].values():
        assert 0 < seconds < 5 and 0 < share < 2
    text = out.read_text()
    assert "| ResNet-18 | student | 11.18 | 11.69 | 3.6" in text
    assert "onnxruntime b1 1t ms (% peak)" in text and "Peak: an fp32 1024x1024 matrix product" in text


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--models", "resnet9000"], "--models: unknown resnet9000"),
        (["--runtimes", "tensorrt"], "--runtimes tensorrt"),
        (["--batches", "0"], "positive numbers"),
        (["--threads", "many"], "comma-separated numbers"),
        (["--out", "/no/such/folder/t.md"], "does not exist"),
    ],
)
def test_bad_flags_are_refused_before_any_model_is_built(flags, needle):
    with pytest.raises(UserError, match=needle):
        deploy().parse_args(flags)
