"""The package layering of lib/: nothing imports from a higher layer, packages of one layer stay apart, no cycles.
Above lib/: no script imports another script or a benchmark, no benchmark imports another bench_*.py (what several
need is in the benchmarks' shared modules) nor edits sys.path, and the tests import no benchmark code."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
REPO = LIB.parent
LAYERS = {"core": 0, "data": 1, "features": 2, "models": 2, "fusion": 2, "cnn": 3, "stages": 4, "hpo": 5,
          "pipeline": 5, "night": 6}


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


# ----------------------------------------------------------------------------- scripts, benchmarks, tests
SCRIPTS = sorted(REPO.glob("*.py"))
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
TESTS = sorted((REPO / "tests").glob("*.py"))


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports, by absolute name (``from x import y`` counts as x and x.y; a relative import
    is resolved against ``package``), at any depth, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = ".".join(filter(None, [package if node.level else "", node.module or ""]))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def is_benchmark(module: str) -> bool:
    """benchmarks/bench_*.py, whichever way it is named."""
    parts = module.split(".")
    return parts[0] == "benchmarks" and len(parts) > 1 and parts[1].startswith("bench_")


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_scripts_import_no_other_script_and_no_benchmark(script):
    """A script parses its options and calls lib/; what two scripts share lives in lib/."""
    names = {p.stem for p in SCRIPTS} - {Path(script).stem}
    found = imported_modules(REPO / script, "")
    assert not {m.split(".")[0] for m in found} & names, f"{script} imports another script"
    assert not any(m.split(".")[0] == "benchmarks" for m in found), f"{script} imports benchmark code"


@pytest.mark.parametrize("bench", [p.name for p in BENCHMARKS])
def test_benchmarks_import_no_other_benchmark(bench):
    """Benchmarks share modules beside them (benchmarks/common.py, ...), not each other."""
    found = imported_modules(REPO / "benchmarks" / bench, "benchmarks")
    others = sorted(m for m in found if is_benchmark(m) or m.startswith("bench_"))
    assert not others, f"benchmarks/{bench} imports {others}"


@pytest.mark.parametrize("bench", [p.name for p in BENCHMARKS])
def test_benchmarks_leave_sys_path_alone(bench):
    """They run as ``python -m benchmarks.<name>`` from the repository root: the one place the path is set."""
    for node in ast.walk(ast.parse((REPO / "benchmarks" / bench).read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            raise AssertionError(f"benchmarks/{bench} uses sys.path")


@pytest.mark.parametrize("test", [p.name for p in TESTS])
def test_tests_import_no_benchmark_code(test):
    """What a test needs from a benchmark is library logic: it lives in lib/."""
    found = imported_modules(REPO / "tests" / test, "")
    assert not any(m.split(".")[0] == "benchmarks" for m in found), f"tests/{test} imports benchmark code"
