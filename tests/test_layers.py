"""The package's layers point one way: no import cycle between its parts (function-level imports included), the
training machinery knows no method by name, and nothing low-level reaches up."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mimir_fast"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports anywhere in its body, as a dotted name below the package."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "mimir_fast":
                target = node.module[len("mimir_fast."):] if node.module != "mimir_fast" else ""
            else:
                continue
            found.update(f"{target}.{a.name}".strip(".") if not node.module else target for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("mimir_fast."):] for a in node.names if a.name.startswith("mimir_fast."))
    return {f for f in found if f}


def _part(module: str) -> str:
    return module.split(".")[0]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "kernels" in path.relative_to(PACKAGE).parts[:1]:
            continue  # the Triton kernels (installed as mimir_fast.kernels) import nothing of the package
        here = _part(_module_name(path)) or "__init__"
        for target in _imports(path):
            there = _part(target)
            if there != here:
                edges.setdefault(here, set()).add(there)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif len(stack) < 16:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_no_import_cycle_between_the_parts_of_the_package():
    edges = _edges()
    assert "train" in edges and "methods" in edges  # the analysis sees the package
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                             ["c", "a", "b", "c"]]


@pytest.mark.parametrize("part, forbidden", [
    ("train", {"methods", "purify", "evaluate", "demo", "cli", "export"}),
    ("methods", {"evaluate", "demo", "cli"}),
    ("purify", {"methods", "evaluate", "demo", "cli"}),
    ("evaluate", {"methods", "demo", "cli"}),
    ("ops", {"train", "methods", "purify", "evaluate", "demo", "cli", "models_mae", "models_vit"}),
    ("data", {"train", "methods", "purify", "evaluate", "demo", "cli"}),
    ("attacks", {"train", "methods", "purify", "evaluate", "demo", "cli"}),
])
def test_layers_point_one_way(part, forbidden):
    assert not _edges().get(part, set()) & forbidden


def test_evaluation_takes_device_helpers_from_the_low_level_module():
    for path in (PACKAGE / "evaluate").rglob("*.py"):
        assert "train.runner" not in _imports(path), path


def _compares_method_names(path: Path) -> list[int]:
    """Lines where a ``.method`` attribute (or ``method`` name) is compared with a string constant."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = [o for o in operands if (isinstance(o, ast.Attribute) and o.attr == "method")
                 or (isinstance(o, ast.Name) and o.id == "method")]
        constants = [o for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)]
        if names and constants:
            lines.append(node.lineno)
    return lines


def test_the_machinery_knows_no_method_by_name():
    paths = [*(PACKAGE / "train").glob("*.py"), PACKAGE / "cli.py", *(PACKAGE / "evaluate").glob("*.py")]
    found = {str(p.relative_to(PACKAGE)): lines for p in paths if (lines := _compares_method_names(p))}
    assert found == {}


def test_the_method_name_check_sees_a_comparison(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(cfg):\n    if cfg.method == 'nim':\n        return 1\n")
    assert _compares_method_names(probe) == [2]


def test_setup_installs_every_package():
    text = (PACKAGE.parent / "setup.py").read_text()
    listed = set(ast.literal_eval(text[text.index("packages=[") + len("packages="):text.index("]", text.index(
        "packages=[")) + 1]))
    found = {"mimir_fast." + ".".join(p.relative_to(PACKAGE).parts)
             for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").is_file() and p.name != "kernels"}
    assert found | {"mimir_fast", "mimir_fast.kernels"} == listed
