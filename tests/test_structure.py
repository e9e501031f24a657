"""The code's shape, read with ast (nothing is imported, no subprocess): every package's
`__init__` says what it may import and imports nothing else, no module imports itself
back through others (an import inside a function counts), no module is over 400 lines,
and the Ray library is imported inside pipeline/ray only; a Ray Data actor's imports load no
polars; and README's layout names every module.

A rule is a `May import: a, b (x, y), c.d.` sentence in a package's `__init__` docstring
(for the modules at the top: `name  May import: ...` lines in pipeline/__init__.py). A name
is a top-level module or package of pipeline; a parenthesis after it that lists only its
submodules allows those alone (any other parenthesis is a note); `nothing` allows nothing,
`everything` every package. A module may always import its own package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pipeline"
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TOP = sorted({name.split(".")[1] for name in MODULES if name != "pipeline"})
TOP_PACKAGES = {name.split(".")[1] for name in MODULES if name.count(".") >= 2}


def _named(node: ast.AST, name: str) -> list[str]:
    """The modules an import statement in module `name` names (a relative one resolved; of
    `from x import y`, x and, where it is a pipeline module, x.y); none for other nodes."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    base = node.module or ""
    if node.level:
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*up, *([node.module] if node.module else [])])
    subs = [f"{base}.{alias.name}" for alias in node.names]
    targets = [s for s in subs if s in MODULES] or [base]
    return targets if len(targets) == len(subs) else [*targets, base]


def imports(name: str) -> set[str]:
    """Every pipeline module `name` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        for target in _named(node, name):
            if not target.startswith("pipeline."):
                continue
            while target not in MODULES:
                target = target.rsplit(".", 1)[0]
            if target != name:
                found.add(target)
    return found


def _rule(text: str, owner: str) -> set[str]:
    """The modules a `May import:` list allows (as prefixes: a package allows its modules)."""
    text = re.sub(r"\s+", " ", text).strip()
    if text.startswith("nothing"):
        return set()
    if text.startswith("everything"):
        return {f"pipeline.{top}" for top in TOP if top != owner}
    allowed: set[str] = set()
    for item, notes in re.findall(r"([\w.]+)(?: \(([^)]*)\))?", text):
        target = f"pipeline.{item}"
        assert target in MODULES, f"{owner}'s rule names {item}, which is no module"
        subs = [s.strip() for s in notes.split(",")] if notes else []
        if subs and all(f"{target}.{s}" in MODULES for s in subs):
            allowed.update(f"{target}.{s}" for s in subs)
        else:
            allowed.add(target)
    return allowed


def rules() -> dict[str, set[str]]:
    """Top-level name -> what it may import."""
    found: dict[str, set[str]] = {}
    for top in TOP:
        path = MODULES[f"pipeline.{top}"]
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        match = re.search(r"May import: (.*?[^.])\.(?:\s|$)", doc, re.S)
        assert match, f"pipeline/{top}/__init__.py does not say what it may import"
        found[top] = _rule(match.group(1), top)
    doc = ast.get_docstring(ast.parse(MODULES["pipeline"].read_text(encoding="utf-8"))) or ""
    for names, text in re.findall(r"^ *([\w, ]+?) +May import: (.*?)\.?$", doc, re.M):
        for top in names.split(", "):
            found[top] = _rule(text, top)
    return found


def test_every_package_and_top_module_says_what_it_may_import() -> None:
    assert sorted(rules()) == TOP


def test_imports_follow_the_rules() -> None:
    allowed, broken = rules(), []
    for name in MODULES:
        if name == "pipeline":
            continue  # the names it offers, imported on first use
        top = name.split(".")[1]
        for target in sorted(imports(name)):
            if target.split(".")[1] == top:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed[top]):
                broken.append(f"{name} imports {target}")
    assert not broken, "imports the package's __init__ does not allow:\n" + "\n".join(broken)


def test_no_import_cycle() -> None:
    graph = {name: imports(name) - {"pipeline"} for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_ray_is_imported_inside_pipeline_ray_only() -> None:
    outside = []
    for name, path in MODULES.items():
        if name.startswith("pipeline.ray"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                heads = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                heads = [(node.module or "").split(".")[0]]
            else:
                continue
            if "ray" in heads:
                outside.append(name)
    assert not outside, f"Ray imported outside pipeline/ray: {outside}"


def test_the_readmes_layout_names_every_module() -> None:
    """README's "How the code is laid out": a package's row names each of its modules (in
    backticks), and the top modules are named in the lines after the table."""
    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    layout = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `pipeline/(\w+)/` \| (.*)$", layout, re.MULTILINE))
    missing = []
    for name in MODULES:
        parts = name.split(".")[1:]
        if not parts or parts[-1] == "__main__":
            continue
        if len(parts) == 1 and parts[0] not in TOP_PACKAGES:  # a top module
            named = f"`{parts[0]}.py`" in layout
        else:
            named = len(parts) == 1 or f"`{parts[1]}`" in rows.get(parts[0], "")
            named = named and parts[0] in rows
        if not named:
            missing.append(name)
    assert not missing, f"not in README's layout: {missing}"


def _imported_at_once(name: str) -> set[str]:
    """What importing `name` imports there and then: its module-level imports (not those in
    a function, nor under `if TYPE_CHECKING`), pipeline modules and libraries alike."""
    body = ast.parse(MODULES[name].read_text(encoding="utf-8")).body
    return {target for node in body for target in _named(node, name)}


def test_a_dataset_actor_loads_no_polars() -> None:
    """Ray Data starts a process for each actor of `process(ds, job)`, and each imports
    pipeline.ray.dataset: polars (and the driver's modules with it) made each start 0.25
    CPU-s and 197 MB, not 0.12 CPU-s and 172 MB, for nothing an actor uses."""
    seen, todo, libraries = set(), ["pipeline.ray.dataset"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for target in _imported_at_once(name) | set(parents):
            if target in MODULES:
                todo.append(target)
            elif not target.startswith("pipeline"):
                libraries.add(target.split(".")[0])
    assert "polars" not in libraries, sorted(seen)
