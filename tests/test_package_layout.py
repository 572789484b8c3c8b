"""The package's layout rules, checked on the source (imports inside functions count):

- no import cycles between modules;
- no module imports a private (``_name``) name of another module;
- nothing below the command modules (``jaxtune.cli``, ``jaxtune.commands``, ``jaxtune.study``) imports one;
- every import goes to a module on the same floor of README's tour or below (``FLOORS``);
- no function longer than 80 lines; ``jaxtune/cli.py`` under 200 lines;
- the top-level modules are the foundation (a new one is a deliberate change of this list).

Each checker is also run on a small package written here that breaks its rule, so a checker that sees nothing fails.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxtune"
COMMAND_MODULES = ("jaxtune.cli", "jaxtune.commands", "jaxtune.study")
FOUNDATION = {"jaxtune.cli", "jaxtune.errors", "jaxtune.names", "jaxtune.paths", "jaxtune.results", "jaxtune.hardware"}
FOUNDATION |= {"jaxtune.sharding"}
FLOORS = {
    "jaxtune": 0,
    "jaxtune.errors": 0,
    "jaxtune.paths": 0,
    "jaxtune.results": 0,
    "jaxtune.names": 0,
    "jaxtune.hardware": 0,
    "jaxtune.families": 1,
    "jaxtune.config": 1,
    "jaxtune.data": 2,
    "jaxtune.models": 3,
    "jaxtune.sharding": 3,
    "jaxtune.runtime": 3,
    "jaxtune.checkpoint": 3,
    "jaxtune.train": 4,
    "jaxtune.convert": 4,
    "jaxtune.eval": 5,
    "jaxtune.serve": 5,
    "jaxtune.demo": 5,
    "jaxtune.study": 6,
    "jaxtune.commands": 7,
    "jaxtune.cli": 7,
}
"""The floors of README's tour (foundation 0, config 1, data 2, model 3, trainer 4, evaluation 5, report 6, commands
7), by module or package: a module imports only from its own floor or below."""
MAX_FUNCTION_LINES = 80
MAX_CLI_LINES = 200


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package's modules it imports (anywhere in the file); and each private name imported across
    modules, as ``importer: module.name``."""
    mods = module_files(package)
    root = package.name
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith(root):
                    continue
                for alias in node.names:
                    if f"{target}.{alias.name}" in mods:
                        edges[name].add(f"{target}.{alias.name}")
                    elif target in mods:
                        edges[name].add(target)
                        if alias.name.startswith("_"):
                            private.append(f"{name}: {target}.{alias.name}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward_imports(edges: dict[str, set[str]], commands: tuple[str, ...]) -> list[str]:
    """Imports of a command module by a module that is not one."""
    is_command = lambda m: m.startswith(commands)  # noqa: E731
    return sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets if is_command(t) and not is_command(m))


def floor_of(module: str, floors: dict[str, int]) -> int:
    """The floor of the longest prefix of ``module`` in ``floors``; a module of no floor is an error."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in floors:
            return floors[".".join(parts[:n])]
    raise AssertionError(
        f"{module} has no floor in tests/test_package_layout.py's FLOORS (add it, and to README's tour)"
    )


def imports_from_above(edges: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    """Each import of a module on a higher floor than the importer's."""
    return sorted(
        f"{m} ({floor_of(m, floors)}) -> {t} ({floor_of(t, floors)})"
        for m, targets in edges.items()
        for t in targets
        if floor_of(t, floors) > floor_of(m, floors)
    )


def long_functions(package: Path, limit: int) -> list[str]:
    """Every function (methods and nested ones too) longer than ``limit`` lines, as ``file:line name (n lines)``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_import_cycles():
    edges, _ = imports(PACKAGE)
    assert cycles(edges) == []


def test_no_private_names_cross_modules():
    _, private = imports(PACKAGE)
    assert private == []


def test_nothing_below_the_commands_imports_a_command_module():
    edges, _ = imports(PACKAGE)
    assert upward_imports(edges, COMMAND_MODULES) == []


def test_every_import_goes_to_the_same_floor_or_below():
    edges, _ = imports(PACKAGE)
    assert imports_from_above(edges, FLOORS) == []


def test_functions_are_short_and_the_cli_is_thin():
    assert long_functions(PACKAGE, MAX_FUNCTION_LINES) == []
    assert len((PACKAGE / "cli.py").read_text(encoding="utf-8").splitlines()) < MAX_CLI_LINES


def test_top_level_modules_are_the_foundation():
    top = {m for m, p in module_files(PACKAGE).items() if m.count(".") == 1 and p.name != "__init__.py"}
    assert top == FOUNDATION


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A package that breaks every rule once."""
    pkg = tmp_path / "jaxtune"
    (pkg / "commands").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "__init__.py").write_text("")
    (pkg / "commands" / "run.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("def f():\n    from jaxtune.b import _hidden\n    return _hidden\n")
    (pkg / "b.py").write_text("from jaxtune import a\n_hidden = 1\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(90))
    (pkg / "c.py").write_text("from jaxtune.commands.run import X\n\n\ndef long():\n" + body)
    return pkg


def test_the_checkers_see_each_broken_rule(broken: Path):
    edges, private = imports(broken)
    assert cycles(edges) == [["jaxtune.a", "jaxtune.b"]]
    assert private == ["jaxtune.a: jaxtune.b._hidden"]
    assert upward_imports(edges, ("jaxtune.commands",)) == ["jaxtune.c -> jaxtune.commands.run"]
    floors = {"jaxtune": 0, "jaxtune.a": 0, "jaxtune.b": 0, "jaxtune.c": 2, "jaxtune.commands": 2}
    assert imports_from_above(edges, floors) == []
    assert imports_from_above(edges, {**floors, "jaxtune.b": 1}) == ["jaxtune.a (0) -> jaxtune.b (1)"]
    assert long_functions(broken, MAX_FUNCTION_LINES) == ["jaxtune/c.py:4 long (91 lines)"]
