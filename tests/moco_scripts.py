"""Import the moco/ scripts as modules (their folder is not a package)."""

import importlib.util
import os

_HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "moco")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"moco_{name}", os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main_moco = _load("main_moco")
main_lincls = _load("main_lincls")
