"""The engine's shape: no import circle, counting imports inside functions too.

The layers themselves are import-linter contracts in pyproject.toml (`lint-imports` in CI);
a circle among modules of one layer would pass those, so it is checked here."""

import grimp


def import_cycles(package: str) -> list[list[str]]:
    """Every group of modules that import each other in a circle (Tarjan's strongly connected
    components of grimp's graph, which counts imports inside functions)."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) & graph.modules for m in graph.modules}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_the_engine_has_no_import_circle():
    assert import_cycles("fp8demo") == []


def test_a_circle_is_found(tmp_path, monkeypatch):
    """The check itself: two modules importing each other (one inside a function) are a circle."""
    package = tmp_path / "circle_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle_pkg import b\n")
    (package / "b.py").write_text("def f():\n    from circle_pkg import a\n")
    (package / "c.py").write_text("from circle_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circle_pkg") == [["circle_pkg.a", "circle_pkg.b"]]
