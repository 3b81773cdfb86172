"""Every public function and method of the library carries type hints.

Read with ast rather than imported, so the check is fast and also covers the
modules that need optional packages (selfsup.detection's data, modeling and
train import detectron2)."""

import ast
import importlib
import os

import pytest
from conftest import REPO

LIBRARY = os.path.join(REPO, "selfsup")
NEED_DETECTRON2 = {"selfsup.detection.data", "selfsup.detection.modeling", "selfsup.detection.train"}


def library_modules():
    """(dotted module name, file path) of every module under selfsup/."""
    for folder, _, files in sorted(os.walk(LIBRARY)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(parts), path


def is_public(name):
    return not name.startswith("_") or name == "__init__"


def decorator_names(function):
    return {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in function.decorator_list}


def missing_hints(function, in_class):
    """Names of the parameters (and "return") of a def that lack annotations."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    # A method's first parameter (self or cls) needs no hint; a staticmethod has none.
    if in_class and "staticmethod" not in decorator_names(function):
        positional = positional[1:]
    missing = [a.arg for a in positional + arguments.kwonlyargs if a.annotation is None]
    if function.returns is None and function.name != "__init__":
        missing.append("return")
    return missing


def public_defs(tree):
    """(qualified name, def node, defined in a class?) of a module's public API:
    its top-level functions and the methods of its top-level classes."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and is_public(node.name):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and is_public(node.name):
            for member in node.body:
                if isinstance(member, functions) and is_public(member.name):
                    yield f"{node.name}.{member.name}", member, True


def unannotated(path):
    tree = ast.parse(open(path).read(), path)
    found = []
    for qualname, function, in_class in public_defs(tree):
        missing = missing_hints(function, in_class)
        if missing:
            found.append(f"{qualname}:{function.lineno} ({', '.join(missing)})")
    return found


def test_every_public_function_has_type_hints():
    lines = []
    for _, path in library_modules():
        found = unannotated(path)
        if found:
            lines += [os.path.relpath(path, REPO)] + [f"    {entry}" for entry in found]
    report = "\n".join(lines)
    print(report)
    assert not lines, f"public functions without type hints (name:line (what lacks one)):\n{report}"


@pytest.mark.parametrize("module", [m for m, _ in library_modules() if m not in NEED_DETECTRON2])
def test_every_module_imports(module):
    # The ast check reads files; importing them proves each one the test
    # walked is a real module (the hints themselves evaluate lazily).
    importlib.import_module(module)


def test_the_checker_catches_a_missing_hint():
    # An independent miniature: one good def, one per kind of gap.
    source = (
        "def good(a: int, *args, b: str = '', **kwargs) -> None: ...\n"
        "def no_return(a: int): ...\n"
        "def _private(a): ...\n"
        "class Thing:\n"
        "    def __init__(self, size): ...\n"
        "    def __repr__(self): ...\n"
        "    @staticmethod\n"
        "    def make(size) -> 'Thing': ...\n"
        "    @classmethod\n"
        "    def build(cls, *, size) -> 'Thing': ...\n"
    )
    tree = ast.parse(source)
    found = {name: missing_hints(node, in_class) for name, node, in_class in public_defs(tree)}
    assert found == {
        "good": [],
        "no_return": ["return"],
        "Thing.__init__": ["size"],
        "Thing.make": ["size"],
        "Thing.build": ["size"],
    }
