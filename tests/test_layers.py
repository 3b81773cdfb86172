"""The package's layers import only downward (docs/architecture.md), and
project modules are imported at module level except the optional heavy
packages' users."""

import ast
import os

from conftest import REPO

# Lower number = lower layer. A module may import its own package and any
# package of a lower layer; models and data are peers that do not import
# each other (so are methods and export), and detection needs only core.
LAYERS = {
    "core": 0,
    "models": 1,
    "data": 1,
    "detection": 1,
    "methods": 2,
    "export": 2,
    "engine": 3,
    "analysis": 4,
    "cli": 5,
}
PEERS_APART = {
    ("models", "data"),
    ("data", "models"),
    ("detection", "models"),
    ("detection", "data"),
    ("export", "methods"),
    ("methods", "export"),
}
LIBRARY = os.path.join(REPO, "selfsup")


def library_modules():
    for folder, _, files in os.walk(LIBRARY):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, LIBRARY).split(os.sep), path


def project_imports(path):
    """(line, imported package under selfsup, inside a function?) of a file."""
    tree = ast.parse(open(path).read(), path)
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.level:
                found.append((child.lineno, "<relative>", in_function))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("selfsup"):
                parts = child.module.split(".")
                found.append((child.lineno, parts[1] if len(parts) > 1 else child.names[0].name, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("selfsup."):
                        found.append((child.lineno, alias.name.split(".")[1], in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_every_library_module_lives_in_a_layer():
    loose = ["/".join(parts) for parts, _ in library_modules() if len(parts) == 1 and parts[0] != "__init__.py"]
    assert loose == []
    folders = {parts[0] for parts, _ in library_modules() if len(parts) > 1}
    assert folders <= set(LAYERS), folders - set(LAYERS)


def test_imports_only_go_downward():
    wrong = []
    for parts, path in library_modules():
        if len(parts) == 1:
            continue
        here = parts[0]
        for line, target, _ in project_imports(path):
            if target == "<relative>":
                wrong.append(f"{'/'.join(parts)}:{line} relative import")
            elif target != here and (
                target not in LAYERS or LAYERS[target] >= LAYERS[here] or (here, target) in PEERS_APART
            ):
                wrong.append(f"{'/'.join(parts)}:{line} {here} -> {target}")
    assert wrong == []


def test_no_function_level_project_imports():
    # A function-level import of a project module hides a dependency (or a
    # cycle); heavy optional packages are imported lazily, project code is not.
    lazy = [
        f"{'/'.join(parts)}:{line}"
        for parts, path in library_modules()
        for line, _, in_function in project_imports(path)
        if in_function
    ]
    assert lazy == []


def test_the_checker_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        "from selfsup.engine.pretrain import run_pretraining\n\ndef f():\n    from selfsup.core import errors\n"
    )
    assert project_imports(str(module)) == [(1, "engine", False), (4, "core", True)]
