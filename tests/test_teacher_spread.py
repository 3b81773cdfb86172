"""benchmarks/teacher_spread.py's variants: each changes what it says."""

import importlib.util
import os

from conftest import SOURCE
from demo import CONFIG

spec = importlib.util.spec_from_file_location("teacher_spread", os.path.join(SOURCE, "benchmarks", "teacher_spread.py"))
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_the_sweeps_base_is_the_demos_recipe_with_moco_crops():
    demo = CONFIG["pretrain_flags"].split()
    base = sweep.command_line(sweep.BASE).split()
    crop = demo.index("--crop-min")
    assert demo[crop + 1] == "0.8" and demo[:crop] + demo[crop + 2 :] == base


def test_each_variant_changes_one_flag_and_no_cos_drops_the_switch():
    base = sweep.variant_flags("base")
    assert base == sweep.BASE
    for name, change in sweep.VARIANTS.items():
        flags = sweep.variant_flags(name)
        differing = {k for k in set(flags) | set(base) if flags.get(k) != base.get(k)}
        assert differing == set(change), name
    assert "--cos" not in sweep.command_line(sweep.variant_flags("no-cos")).split()
    assert "--crop-min 0.8" in sweep.command_line(sweep.variant_flags("crop-min-0.8"))
