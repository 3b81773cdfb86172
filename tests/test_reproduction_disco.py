"""The DisCo, Fig5 and Fig6 sections of Reproduction.md, verbatim, one epoch on tiny data."""

import os
import re
import shutil

import pytest
import torch
from conftest import TINY_LINCLS, TINY_PRETRAIN, reproduction_commands, run, with_overrides
from layouts import moco_v2_checkpoint, swav_release_state, write_cifar

PLACEHOLDER = "/path/to/ckpt/checkpoint_0199.pth.tar"


class Checkpoints(dict):
    """name -> checkpoint path; a file is written the first time a command
    asks for it (the ResNet-50x2 teacher alone takes half a minute and
    0.5 GB, and only the DisCo section reads it). Copies share the files."""

    def __init__(self, root, tiny_data, made=None):
        super().__init__()
        self.root, self.tiny_data, self.made = root, tiny_data, {} if made is None else made

    def copy(self):
        return Checkpoints(self.root, self.tiny_data, self.made)

    def release(self, name):
        """Delete a file no later command reads (it is written again if one does)."""
        path = self.made.pop(name, None)
        self.pop(name, None)
        if path is not None and os.path.exists(path):
            os.remove(path)

    def __missing__(self, name):
        if name not in self.made:
            self.made[name] = self._write(name)
        return self.made[name]

    def _write(self, name):
        releases = {
            "teacher_resnet50": lambda: moco_v2_checkpoint("resnet50", hidden=2048),
            "teacher_resnet50w2": lambda: swav_release_state("resnet50w2", 8192),
            "teacher_SWAVresnet50": lambda: swav_release_state("resnet50", 2048),
            "student_resnet18": lambda: moco_v2_checkpoint("resnet18", hidden=512),
        }
        path = str(self.root / f"{name}.pth.tar")
        if name in releases:
            torch.save(releases[name](), path)
            return path
        assert name == "student_efficientb0", name
        out = self.root / "eff"
        cmd = f"python3 main_moco.py -a efficientb0 --mlp {TINY_PRETRAIN} --ckpt-dir {out} {self.tiny_data}"
        result = run(cmd, cwd="moco")
        assert result.returncode == 0, result.stdout[-2000:]
        return str(out / "checkpoint_0000.pth.tar")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_data):
    """Teachers in their official layouts, and students the evaluations can take."""
    root = tmp_path_factory.mktemp("ckpts")
    yield Checkpoints(root, tiny_data)
    shutil.rmtree(root, ignore_errors=True)  # about 1 GB once the ResNet-50x2 and ResNet-50 teachers are written


def arch_of(cmd, flag="-a"):
    m = re.search(rf"(?:^|\s){flag} (\S+)", cmd)
    return m.group(1) if m else None


def run_section(section, data, checkpoints, tmp_path, data_for=None, keep=()):
    """Run every command of a section in order, following its `cd`s; training
    commands hand their checkpoint to later evaluations of the same arch.
    A training run's folder is deleted once a later training of its arch
    replaces it (no command can read it then; `keep`: run folders to keep):
    a DisCo student's checkpoint holds its teacher, ResNet-50x2's 0.4 GB.
    A teacher no later command of the section reads is deleted too."""
    cwd, outputs, trained = ".", [], {}
    commands = reproduction_commands(section)
    teacher_of = {i: teacher_key(c) for i, c in enumerate(commands) if "main.py" in c or "distill_rkd" in c}
    for i, cmd in enumerate(commands):
        if cmd.startswith("cd "):
            cwd = os.path.normpath(os.path.join(cwd, cmd[3:]))
            continue
        if cmd.startswith("cp "):  # copying the subset into /dev/shm: we point at it instead
            continue
        arch = arch_of(cmd)
        target = data_for(cmd) if data_for else data
        if "main.py" in cmd or "distill_rkd" in cmd:
            teacher = checkpoints[teacher_of[i]]
            out = tmp_path / f"run{i}"
            replaced = trained.get(arch)
            if replaced is not None and replaced.name not in keep:
                shutil.rmtree(replaced)
            trained[arch] = out
            cmd = re.sub(r"--teacher \S+", f"--teacher {teacher}", cmd)
            cmd = with_overrides(cmd, target, f"{TINY_PRETRAIN} --ckpt-dir {out}")
            checkpoints[f"student_{arch}"] = str(out / "checkpoint_0000.pth.tar")
        elif "--pretrained" in cmd:
            cmd = with_overrides(
                cmd,
                target,
                f"{TINY_LINCLS} --ckpt-dir {tmp_path / f'lin{i}'}",
                [(PLACEHOLDER, checkpoints[f"student_{arch}"])],
            )
        elif "imagenet_1_fraction.py" in cmd:
            # --ratio 1|10 reads SimCLR's ImageNet lists; the tiny set's names are not ImageNet's.
            cmd = with_overrides(cmd, target, "--balanced")
        else:
            cmd = with_overrides(cmd, target, "")
        result = run(cmd, cwd=cwd, env={"DISCO_DATA": data})
        outputs.append((cmd, result))
        assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}"
        if i in teacher_of and teacher_of[i] not in [k for j, k in teacher_of.items() if j > i]:
            checkpoints.release(teacher_of[i])
    return outputs


def teacher_key(cmd):
    return f"teacher_{arch_of(cmd, '--teacher_arch') or 'resnet50'}"


def test_disco_section(tiny_data, checkpoints, tmp_path):
    outputs = run_section("disco", tiny_data, checkpoints.copy(), tmp_path, keep=("run1",))
    trained = [r for c, r in outputs if "main.py" in c or "distill_rkd" in c]
    evaluated = [r for c, r in outputs if "lincls" in c]
    assert len(trained) == 6 and len(evaluated) == 5
    assert all("loss_mse" in r.stdout for r in trained[:2])
    assert "loss_rkd_angle" in trained[2].stdout and "loss_mse" in trained[2].stdout
    assert "loss_rkd_angle" in trained[3].stdout and "loss_mse" not in trained[3].stdout
    assert all("sanity check passed" in r.stdout for r in evaluated)
    # The students keep the MoCo layout, so linear evaluation reads them.
    student = torch.load(tmp_path / "run1" / "checkpoint_0000.pth.tar", weights_only=False)
    assert "module.encoder_q.classifier.0.weight" in student["state_dict"]
    assert student["state_dict"]["module.encoder_q.classifier.0.weight"].shape == (2048, 1280)


def test_fig5_section(tiny_data, checkpoints, tmp_path):
    def data_for(cmd):
        pct = "1" if "efficientb0" in cmd else "10"
        return f"{tiny_data}_{pct}_fraction"

    outputs = run_section("fig5", tiny_data, checkpoints.copy(), tmp_path, data_for)
    for pct, per_class in (("1", 1), ("10", 1)):
        train = os.path.join(f"{tiny_data}_{pct}_fraction", "train")
        assert sorted(len(os.listdir(os.path.join(train, c))) for c in os.listdir(train)) == [per_class] * 10
    assert sum(" * Acc@1 " in r.stdout for _, r in outputs) == 2


def test_fig6_section(checkpoints, tmp_path, monkeypatch):
    cifar = tmp_path / "cifar"
    write_cifar(str(cifar), "cifar10", n_train=40, n_test=10)
    write_cifar(str(cifar), "cifar100", n_train=40, n_test=10, classes=100)
    # Fakes, not the official files (torchvision's md5 check refuses them):
    # the scripts read them as --unsafe-load would, from the environment.
    monkeypatch.setenv("SELFSUP_UNSAFE_LOAD", "1")
    outputs = run_section("fig6", str(cifar), checkpoints.copy(), tmp_path)
    assert len(outputs) == 2 and all(" * Acc@1 " in r.stdout for _, r in outputs)
