"""The package layering of lib/: nothing imports from a higher layer, packages of one layer stay apart, no cycles."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
LAYERS = {"core": 0, "data": 1, "features": 2, "models": 2, "fusion": 2, "cnn": 3, "stages": 4, "hpo": 5, "night": 6}


def package(module: str) -> str:
    """lib.<package>.x -> <package>."""
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    """Every lib module a file imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib."):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if (LIB.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lib."))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): imports(p) for p in sorted(LIB.rglob("*.py"))}


def test_every_package_has_a_layer():
    assert {package(m) for m in MODULES if m.count(".") >= 1} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.count(".") >= 1))
def test_imports_go_down_only(module):
    here = package(module)
    for target in MODULES[module]:
        there = package(target)
        if there == here:
            continue
        assert LAYERS[there] < LAYERS[here], f"{module} imports {target}: layer {there} is not below {here}"


def test_no_import_cycles():
    graph = {m: {t for t in deps if t in MODULES} for m, deps in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
