"""Flag values that make no sense are refused where they enter: inf and nan
in any float flag, negative counts, flags that need each other, sizes a
model cannot take; argparse's own errors are one line too. Each row of
BAD_FLAG_ROWS is a row of docs/bad-input.md; the enumerations below go
through every flag of every script's parser, so a flag added later is
checked without a new row."""

import argparse
import gc
import glob
import importlib.util
import inspect
import os
import re
import shlex
import sys

import pytest
import torch
from conftest import REPO, run
from test_bad_input import fill, places  # noqa: F401 (places: a fixture, used by name)

from selfsup.core.checks import FlagParser, bn_group_size, bn_group_warning

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# The scripts a user runs, and flags that make a valid command of each
# (DATA, TMP: the tiny data set and the test's folder).
BASE = {
    "moco/main_moco.py": ["DATA"],
    "moco/main_lincls.py": ["DATA"],
    "DisCo/main.py": ["--teacher", "t.pth", "DATA"],
    "DisCo/main_moco_distill_rkd.py": ["--teacher", "t.pth", "DATA"],
    "DisCo/main_lincls.py": ["DATA"],
    "DisCo/main_lincls_semi.py": ["DATA"],
    "DisCo/yt_main_lincls.py": ["DATA"],
    "DisCo/cifar_main_lincls.py": ["DATA"],
    "DisCo/export_embed.py": ["--pretrained", "x.pth", "--out", "TMP/emb", "DATA"],
    "DisCo/draw.py": ["--out", "TMP/t.png", "--embed-dir", "TMP/emb"],
    "swav-master/main_swav.py": ["--data_path", "DATA/train", "--dump_path", "TMP/swav"],
    "swav-master/main_swav_distill.py": ["--data_path", "DATA/train", "--dump_path", "TMP/sd", "--pretrained", "t.pth"],
    "swav-master/eval_linear.py": ["--data_path", "DATA", "--dump_path", "TMP/lin"],
    "detection/convert-pretrain-to-detectron2.py": ["in.pth", "TMP/out.pkl"],
    "detection/train_net.py": [],
    "data/cal_mi.py": ["--out-dir", "TMP/bi", "--embed-dir", "TMP/emb"],
    "data/mi_by_binning.py": ["e.npy", "l.npy"],
    "data/imagenet_1_fraction.py": ["--balanced", "--ratio", "10", "--source", "DATA", "--output", "TMP/frac"],
    "data/plot_curves.py": ["TMP/run"],
    "data/prepare_builtin.py": ["--out", "TMP/builtin"],
    "data/prepare_digits.py": ["--out", "TMP/digits"],
    "tools/demo.py": ["--data", "DATA", "--out", "TMP/demo", "--results", "TMP/res"],
    "tools/tab1_small.py": ["--data", "DATA", "--out", "TMP/tab1", "--results", "TMP/tab1res"],
    "tools/export.py": ["ckpt.pth.tar", "--out", "TMP/b.safetensors"],
    # its own flags go before `--`, the script's after it
    "tools/run_with_submitit.py": ["--executor", "local", "--job-dir", "TMP/jobs", "--", "moco/main_moco.py"],
}
SCRIPTS = sorted(p for p in BASE if os.path.isfile(os.path.join(REPO, p)))  # those this checkout has
SCRIPT_FOLDERS = ("moco", "DisCo", "swav-master", "detection", "data", "tools")
NOT_SCRIPTS = {"tools/pipeline.py"}  # the tools' shared module
# What would start work if a value were wrongly accepted: replaced by a
# stand-in that fails the test at once instead.
GUARDED = ("launch", "launch_in_place", "export_checkpoint", "run_pipeline", "reference_step_seconds", "prepare")
GUARDED += ("prepare_digits", "convert_file", "import_submitit")

# Scripts whose guarded function checks its ranges first, before any work.
CHECKS_IN_WORK = {"tools/export.py": "export_checkpoint"}  # --image-size, then the checkpoint is read

_MODULES = {}


def load(path):
    """A script imported as a module (the tools import their siblings by name)."""
    if path not in _MODULES:
        folder = os.path.join(REPO, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(
            "flags_" + re.sub(r"\W", "_", path[:-3]), os.path.join(REPO, path)
        )
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
        _MODULES[path] = module
    return _MODULES[path]


def call(path, argv, monkeypatch):
    """The script's entry point on `argv` (through sys.argv for those that read it)."""
    module = load(path)
    for name in GUARDED:
        if hasattr(module, name) and CHECKS_IN_WORK.get(path) != name:
            monkeypatch.setattr(module, name, _accepted)
    entry = getattr(module, "main", None) or module.run
    if inspect.signature(entry).parameters:
        return entry(argv)
    monkeypatch.setattr(sys, "argv", [path, *argv])
    return entry()


def _accepted(*args, **kwargs):
    raise AssertionError("the flags were accepted: the script went on to do its work")


class _Captured(BaseException):  # BaseException: cli_main lets it through
    def __init__(self, parser):
        self.parser = parser


def parser_of(path, monkeypatch, argv):
    """The parser `path` builds, caught as it starts parsing `argv`."""

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        try:
            call(path, argv, m)
        except _Captured as caught:
            return caught.parser
    raise AssertionError(f"{path} parsed no flags")


def error_line(capsys, monkeypatch, path, argv):
    """Run `path` on `argv` in this process: status 2 and one `error:` line."""
    with pytest.raises(SystemExit) as exit_info:
        call(path, argv, monkeypatch)
    assert exit_info.value.code == 2, exit_info.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def base(request, tiny_data, monkeypatch):
    """argv maker: the script's valid command, then `flags` (the last value of
    a flag wins), or before its `--` for a script that passes on what follows."""
    where = request.getfixturevalue("places")
    monkeypatch.chdir(where["TMP"])  # default --ckpt-dir/--dump_path land here
    # exit_with's full collection (it frees a failed run's loaders) takes 0.3 s
    # in a process holding torch and timm; here nothing is left to free.
    monkeypatch.setattr(gc, "collect", lambda *a: 0)

    def argv(path, flags):
        cut = BASE[path].index("--") if "--" in BASE[path] else len(BASE[path])
        return fill(BASE[path][:cut] + list(flags) + BASE[path][cut:], where, tiny_data)

    return argv


def test_every_script_is_in_the_table():
    found = {
        os.path.relpath(p, REPO)
        for folder in SCRIPT_FOLDERS
        for p in glob.glob(os.path.join(REPO, folder, "*.py"))
        if os.path.basename(p) != "__init__.py"
    }
    assert found - NOT_SCRIPTS == set(SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS)
def test_every_script_parses_with_the_flag_parser(path, monkeypatch, base):
    assert isinstance(parser_of(path, monkeypatch, base(path, [])), FlagParser)


def flags_of_type(parser, kind):
    return [a for a in parser._actions if a.option_strings and a.type is kind]


@pytest.mark.parametrize("path", SCRIPTS)
def test_every_float_flag_refuses_inf_and_nan(path, monkeypatch, capsys, base):
    for action in flags_of_type(parser_of(path, monkeypatch, base(path, [])), float):
        for value in ("inf", "nan"):
            line = error_line(capsys, monkeypatch, path, base(path, [action.option_strings[-1], value]))
            assert any(o in line for o in action.option_strings) and f" {value}:" in line, line
            assert "expected a finite number" in line, line


@pytest.mark.parametrize("path", SCRIPTS)
def test_every_int_flag_refuses_a_negative_count_and_a_non_number(path, monkeypatch, capsys, base):
    for action in flags_of_type(parser_of(path, monkeypatch, base(path, [])), int):
        names = action.option_strings
        line = error_line(capsys, monkeypatch, path, base(path, [names[-1], "-5"]))
        assert any(o in line for o in names) and "-5" in line, line
        line = error_line(capsys, monkeypatch, path, base(path, [names[-1], "inf"]))  # argparse's own error
        assert "invalid int value: 'inf'" in line and any(o in line for o in names), line


M, L, D, R = "moco/main_moco.py", "moco/main_lincls.py", "DisCo/main.py", "DisCo/main_moco_distill_rkd.py"
S, SD, E = "swav-master/main_swav.py", "swav-master/main_swav_distill.py", "swav-master/eval_linear.py"
# (script, flags, what the one line must contain): docs/bad-input.md's rows.
BAD_FLAG_ROWS = [
    (M, "--moco-t inf", "error: --moco-t inf: expected a finite number"),
    (M, "--wd inf", "--wd/--weight-decay inf: expected a finite number"),
    (M, "--lr nan", "--lr/--learning-rate nan: expected a finite number"),
    (M, "--gamma inf", "--gamma inf: expected a finite number"),
    (M, "--dist-timeout inf", "--dist-timeout inf: expected a finite number"),
    (M, "--crop-min nan", "--crop-min nan: expected a finite number"),
    (M, "--save-freq -1", "--save-freq -1: expected 0 (checkpoints after each epoch only) or more iterations"),
    (M, "--rank 3", "--rank 3 without --world-size: give --world-size, the number of nodes"),
    (M, "--world-size 2", "--world-size 2 nodes: give each node its --rank (0 to 1)"),
    (M, "--cpu-procs 2", "--cpu-procs 2 needs --multiprocessing-distributed"),
    (M, "-b 16 --moco-k 32 --world-size 4 --rank 0", "--moco-k 32 is smaller than the 64 keys of one step"),
    (M, "--gpu-aug-decode workers", "--gpu-aug-decode workers sets how --gpu-aug decodes: it needs --gpu-aug"),
    (M, "--epochs abc", "error: argument --epochs: invalid int value: 'abc'"),
    (M, "--moco-tt 0.2", "error: unrecognized arguments: --moco-tt 0.2"),
    (M, "-a beit_base_patch16_224 --image-size 32", "-a beit_base_patch16_224 cannot take 32 px images"),
    (M, "-a tv:vit_b_16 --image-size 32", "-a tv:vit_b_16 cannot take 32 px images (--image-size 32)"),
    (L, "--gamma inf", "--gamma inf: expected a finite number"),
    (L, "--rank 1", "--rank 1 without --world-size"),
    (L, "--save-freq -5", "--save-freq -5: expected 0"),
    (L, "-a vit_tiny_patch16_224 --image-size 8", "should be divisible by patch size (16)"),
    (D, "--teacher_arch dinov2_vits14 --image-size 32", "--teacher_arch dinov2_vits14 cannot take 32 px images"),
    (D, "--teacher-bn frozen", "error: argument --teacher-bn: invalid choice: 'frozen'"),
    (R, "--rkd-angle-weight inf", "--rkd-angle-weight inf: expected a finite number"),
    (R, "--rkd-views 3", "error: argument --rkd-views: invalid choice: 3"),
    ("DisCo/main_lincls_semi.py", "--label nan", "--label nan: expected a finite number"),
    ("DisCo/cifar_main_lincls.py", "--dataset cifar1000", "argument --dataset: invalid choice: 'cifar1000'"),
    ("DisCo/yt_main_lincls.py", "--momentum nan", "--momentum nan: expected a finite number"),
    ("DisCo/main_lincls.py", "--world-size 3", "--world-size 3 nodes: give each node its --rank (0 to 2)"),
    (S, "--rank 3", "--rank 3 without --world_size"),
    (S, "--rank 2 --world_size 2", "--rank 2 with --world_size 2: expected a rank below 2"),
    (S, "--rank -1", "--rank -1: expected the process's rank (0 or more)"),
    (S, "--save_freq -1", "--save_freq -1: expected 0"),
    (S, "--local_rank -1", "--local_rank -1: expected the process's index on its node"),
    (S, "--syncbn_process_group_size 0", "--syncbn_process_group_size 0: expected 1 or more processes"),
    (S, "--crops_for_assign 0 0", "--crops_for_assign [0, 0]: expected each crop once"),
    (S, "--queue_length 16 --batch_size 64", "--queue_length 16 is shorter than one step's 64 features"),
    (S, "--size_crops 224 96", "need one value per resolution"),
    (S, "--min_scale_crops nan", "--min_scale_crops nan: expected a finite number"),
    (S, "--nmb_prototypes 0", "--nmb_prototypes 0: expected a positive number of prototypes"),
    (S, "--temperature inf", "--temperature inf: expected a finite number"),
    (S, "--arch beit_base_patch16_224 --size_crops 32", "cannot take 32 px images (--size_crops 32)"),
    (SD, "--mse_weight inf", "--mse_weight inf: expected a finite number"),
    (SD, "--teacher_hidden_mlp -1", "--teacher_hidden_mlp -1: expected 0 (linear head) or a positive width"),
    (E, "--epochs 0", "--epochs 0: expected a positive number"),
    (E, "--save_freq -1", "--save_freq -1: expected 0"),
    (E, "--gamma inf", "--gamma inf: expected a finite number"),
    (E, "--arch tv:vit_b_16 --image_size 32 --small_images false", "cannot take 32 px images (--image_size 32)"),
    ("DisCo/export_embed.py", "--batch-size abc", "error: argument -b/--batch-size: invalid int value: 'abc'"),
    ("DisCo/export_embed.py", "-a vit_tiny_patch16_224 --image-size 8", "cannot take 8 px images (--image-size 8)"),
    ("DisCo/draw.py", "--threads -1", "--threads -1: expected 0 (no cap) or more"),
    ("DisCo/draw.py", "--classes 0 -3", "--classes 0 -3: expected label values >= 0"),
    ("DisCo/draw.py", "--perplexity inf", "--perplexity inf: expected a finite number"),
    ("data/cal_mi.py", "--sweep 4 x", "error: argument --sweep: invalid int value: 'x'"),
    ("data/mi_by_binning.py", "--bins 1", "--bins 1: expected a bin count of 2 or more"),
    ("data/imagenet_1_fraction.py", "--ratio nan", "--ratio nan: expected a finite number"),
    ("data/prepare_builtin.py", "--train-per-class 0", "--train-per-class 0: expected a positive number of images"),
    ("data/prepare_builtin.py", "--seed -1", "--seed -1: expected an integer in [0, 2**32)"),
    ("data/prepare_digits.py", "--seed -1", "--seed -1: expected an integer in [0, 2**32)"),
    ("data/prepare_digits.py", "--val-fraction nan", "--val-fraction nan: expected a finite number"),
    ("detection/convert-pretrain-to-detectron2.py", "extra.pkl", "error: unrecognized arguments: extra.pkl"),
    ("detection/train_net.py", "--num-gpus x", "error: argument --num-gpus: invalid int value: 'x'"),
    ("data/plot_curves.py", "--labels", "error: argument --labels: expected at least one argument"),
    ("tools/export.py", "--image-size 0", "error: --image-size 0: expected a positive number of pixels"),
    ("tools/run_with_submitit.py", "--max-timeouts -1", "error: --max-timeouts -1: expected 0 or more"),
    ("tools/run_with_submitit.py", "--timeout inf", "error: --timeout inf: expected a finite number"),
    ("tools/run_with_submitit.py", "--nodes abc", "error: argument --nodes: invalid int value: 'abc'"),
]


@pytest.mark.parametrize(
    "path,flags,needle", BAD_FLAG_ROWS, ids=[f"{p.split('/')[-1]} {f}" for p, f, _ in BAD_FLAG_ROWS]
)
def test_bad_flag_is_one_line_before_any_work(path, flags, needle, capsys, monkeypatch, base):
    assert needle in error_line(capsys, monkeypatch, path, base(path, shlex.split(flags)))


def test_one_line_also_from_the_real_interpreter(tiny_data):
    """Not only in-process: the script run as a user runs it (no usage block)."""
    r = run(f"python3 main_moco.py --moco-t inf --epochs abc {tiny_data}", cwd="moco", timeout=120)
    assert r.returncode == 2 and r.stdout.strip().splitlines() == [
        "error: argument --epochs: invalid int value: 'abc' (see main_moco.py --help)"
    ], r.stdout


# ---- every command of Reproduction.md (ours and the original's) still parses --


def _commands(markdown):
    """(script path, argv) of each python command in the code blocks of
    `markdown`. A block that starts with `cd` starts from the checkout's root
    (one without carries on where the last one was); continuation lines are
    joined and the pipe to tee dropped. A script the folder lacks (the
    original ran main_lincls_semi.py from data/) is looked up among the
    script folders, when only one holds it."""
    folder, out = "", []
    for block in re.findall(r"```[A-Za-z]*\n(.*?)```", open(markdown).read(), re.S):
        lines = [ln.split("2>&1")[0].strip() for ln in block.replace("\\\n", " ").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if lines and lines[0].startswith("cd "):
            folder = ""
        for line in lines:
            if line.startswith("cd "):
                folder = os.path.normpath(os.path.join(folder, line[3:].strip()))
            elif line.startswith(("python3 ", "python ")):
                words = [w for w in shlex.split(line)[1:] if w != "-u"]
                if words[:2] == ["-m", "torch.distributed.launch"]:
                    words = [w for w in words[2:] if not w.startswith("--nproc_per_node")]
                out.append((_script_path(folder, words[0]), words[1:]))
    return out


def _script_path(folder, name):
    if os.path.isfile(os.path.join(REPO, folder, name)):
        return os.path.join(folder, name)
    found = [os.path.join(f, name) for f in SCRIPT_FOLDERS if os.path.isfile(os.path.join(REPO, f, name))]
    return found[0] if len(found) == 1 else None


REPRODUCTIONS = [
    os.path.join(REPO, "Reproduction.md"),
    os.path.join(REPO, "..", "shared", "seeds", "original-Reproduction.md"),
]


@pytest.mark.parametrize("markdown", [m for m in REPRODUCTIONS if os.path.exists(m)], ids=os.path.basename)
def test_every_reproduction_command_parses(markdown, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands' ./ckpt, ./logs
    parsed = 0
    for path, argv in _commands(markdown):
        if path is None or not hasattr(load(path), "parse_args") or path.startswith("data/"):
            continue  # data preparation (it writes), detection and plotting: no run's flags to check
        argv = [
            os.path.join(tiny_data, a[len("/dev/shm") :].lstrip("/")) if a.startswith("/dev/shm") else a for a in argv
        ]
        args = load(path).parse_args(argv)
        assert args is not None
        parsed += 1
    assert parsed >= 25  # the moco, disco, fig5, fig6 and tab5 sections


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.startswith(("moco/", "DisCo/main", "swav-master/"))])
def test_every_default_parses(path, base):
    args = load(path).parse_args(base(path, []))
    assert args is not None


# ---- BatchNorm groups of fewer than 8 images -------------------------------------


def test_bn_group_size_is_the_split_layers_own():
    from selfsup.models.split_bn import bn_groups, chunk_sizes

    for batch in range(1, 70):
        for splits in (1, 2, 3, 8, 16):
            assert bn_group_size(batch, splits, 1) == min(chunk_sizes(batch, bn_groups(batch, splits)))
        assert bn_group_size(batch, 8, 4) == batch  # under torch.distributed each process is one group


def test_bn_group_warning_names_the_flags_and_the_fix():
    line = bn_group_warning(16, 8, 1)  # the MobileNet-v4 run of issue 21
    assert line.startswith(
        "=> warning: BatchNorm groups of 2 images (-b/--batch-size 16 in one process, --bn-splits 8)"
    )
    assert "lower --bn-splits to 2 or raise -b/--batch-size to 64 or more" in line
    assert "raise -b/--batch-size to 8 or more" in bn_group_warning(4, 1, 1)
    assert "each of the 4 processes normalises its own 2 images" in bn_group_warning(2, 8, 4)
    assert bn_group_warning(30, 2, 1) is None and bn_group_warning(64, 8, 1) is None  # conftest's TINY, the default


def test_no_bn_warning_for_a_model_without_batchnorm():
    from selfsup.models.backbones import small_bn_group_warning

    assert small_bn_group_warning(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)), 4, 8, 1) is None
    assert small_bn_group_warning(torch.nn.BatchNorm2d(3), 4, 8, 1) is not None


def test_bn_warning_is_printed_once_at_start(tiny_data, tmp_path, capsys):
    """-b 16 with the default 8 groups in one process: groups of 2 images."""
    argv = ["-a", "resnet18", "-b", "16", "--moco-k", "32", "--image-size", "16", "--small-images", "-j", "0"]
    load(M).main([*argv, "--epochs", "2", "-p", "100", "--ckpt-dir", str(tmp_path), tiny_data])
    out = capsys.readouterr().out.splitlines()
    warnings = [i for i, line in enumerate(out) if "BatchNorm groups of" in line]
    assert len(warnings) == 1 and out[warnings[0]] == bn_group_warning(16, 8, 1), out
    assert warnings[0] < next(i for i, line in enumerate(out) if line.startswith("Epoch: [0]"))


# ---- transformers at an image size other than their native one ------------------


def test_timm_vit_student_trains_at_32_px_and_its_checkpoint_reloads_for_a_linear_evaluation(
    tiny_data, tmp_path, capsys
):
    """vit_tiny_patch16_224 at 32 px without --small-images stopped in timm's
    AssertionError; it now resamples its 14x14 position embeddings to the
    2x2 patch grid, and its checkpoint keeps the native shape."""
    tiny = ["-a", "vit_tiny_patch16_224", "--image-size", "32", "-b", "30", "-j", "0", "--epochs", "1", "-p", "100"]
    load(M).main([*tiny, "--moco-k", "64", "--mlp", "--ckpt-dir", str(tmp_path / "p"), tiny_data])
    ckpt = tmp_path / "p" / "checkpoint_0000.pth.tar"
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state["module.encoder_q.pos_embed"].shape == (1, 197, 192)
    load(L).main([*tiny, "--pretrained", str(ckpt), "--lr", "0.1", "--ckpt-dir", str(tmp_path / "l"), tiny_data])
    out = capsys.readouterr().out
    assert "Traceback" not in out and "sanity check passed" in out
    lincls = torch.load(tmp_path / "l" / "checkpoint.pth.tar", weights_only=False)["state_dict"]
    assert torch.equal(lincls["module.pos_embed"], state["module.encoder_q.pos_embed"])


def test_vit_at_its_native_size_computes_as_before():
    """The dynamic build changes nothing at the size the model was made for."""
    import timm

    from selfsup.models.backbones import create_backbone

    torch.manual_seed(0)
    fixed = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    model, _ = create_backbone("vit_tiny_patch16_224")
    model.load_state_dict(fixed.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fixed(x))


def test_dino_release_teacher_takes_other_sizes_and_dinov2_needs_multiples_of_14():
    from selfsup.core.errors import UserError
    from selfsup.models.releases import check_image_size

    for size in (32, 48, 224):
        check_image_size("dino_vits16", size)
    check_image_size("dinov2_vits14", 28)
    with pytest.raises(UserError, match=r"dinov2_vits14 cannot take 32 px images .* divisible by patch size \(14\)"):
        check_image_size("dinov2_vits14", 32)
