"""The relay's modules import each other in one direction only: no cycles between modules, none
between its parts (each subpackage and each top-level module is one node), the configuration
imported only by the composition layer, and telemetry reads components without importing the
server."""

from __future__ import annotations

import ast
from pathlib import Path

import promptstamp_relay

PACKAGE = "promptstamp_relay"
ROOT = Path(promptstamp_relay.__file__).parent


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports when it runs (anywhere in it, lazily or not),
    except under ``if TYPE_CHECKING:``."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here
                    for _ in range(child.level - 1):
                        base = base.rpartition(".")[0]
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in child.names)  # submodules imported by name
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out = {m for m in found if m in MODULES and m != name}
    # Importing a.b.c runs a and a.b first, unless they are already running: ``name``'s own
    # packages are (a package's __init__ importing its submodules is no cycle).
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    for m in list(out):
        parent = m.rpartition(".")[0]
        while parent.startswith(PACKAGE) and parent not in own:
            out.add(parent)
            parent = parent.rpartition(".")[0]
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def _reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = set(), [a]
    while todo:
        n = todo.pop()
        if n == b:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return False


def test_the_graph_is_read() -> None:
    assert len(MODULES) > 30
    assert f"{PACKAGE}.admission" in GRAPH[f"{PACKAGE}.receive.grpc"]
    assert f"{PACKAGE}.admission.auth" in GRAPH[f"{PACKAGE}.admission"]


def test_no_import_cycle_between_modules() -> None:
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH) or [])


def part(m: str) -> str:
    """The node a module belongs to: its top-level subpackage, or itself when top-level."""
    parts = m.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else m


PARTS: dict[str, set[str]] = {}
for _m, _deps in GRAPH.items():
    _p = part(_m)
    PARTS.setdefault(_p, set()).update(q for d in _deps if (q := part(d)) not in (_p, PACKAGE))


def test_no_import_cycle_between_parts() -> None:
    """Subpackages and top-level modules alike: ``config -> receive -> config`` through any of
    their modules is a cycle, as is ``intake -> admission -> intake``."""
    assert f"{PACKAGE}.cli" in PARTS and f"{PACKAGE}.core" in PARTS  # both kinds are nodes
    assert _cycle(PARTS) is None, " -> ".join(_cycle(PARTS) or [])


#: The composition layer: the only parts that may import ``config`` (components are handed
#: their own settings objects, which live next to them).
COMPOSERS = {"cli", "labels_cli", "wiring", "server", "demo", "replay"}


def test_only_the_composition_layer_imports_the_configuration() -> None:
    importers = {p.rpartition(".")[2] for p, deps in PARTS.items() if f"{PACKAGE}.config" in deps}
    assert importers <= COMPOSERS, sorted(importers - COMPOSERS)


def test_the_core_does_no_io() -> None:
    """Nothing in ``core`` imports grpc, HTTP, Redis or SQLite, or another part but ``wire`` and
    ``counters`` (both standard library only)."""
    for name, path in MODULES.items():
        if not name.startswith(f"{PACKAGE}.core"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
            n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        bad = {n for n in names if n.split(".")[0] in ("grpc", "http", "redis", "sqlite3", "socket", "urllib")}
        assert not bad, (name, bad)
    assert PARTS[f"{PACKAGE}.core"] <= {f"{PACKAGE}.wire", f"{PACKAGE}.counters"}, PARTS[f"{PACKAGE}.core"]


def test_telemetry_and_the_server_do_not_import_each_other() -> None:
    telemetry, server = f"{PACKAGE}.ops.telemetry", f"{PACKAGE}.server"
    assert not _reaches(GRAPH, telemetry, server)
    assert telemetry not in GRAPH[server]


def test_admission_is_transport_neutral() -> None:
    admit = MODULES[f"{PACKAGE}.admission"].read_text(encoding="utf-8")
    tree = ast.parse(admit)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n == "grpc" or n.startswith(("grpc.", "http")) for n in names), names
    assert not _reaches(GRAPH, f"{PACKAGE}.admission", f"{PACKAGE}.receive")


def test_at_most_a_dozen_modules_at_the_top() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top
