"""Import graph of the camkit package, read with `ast` (nothing is imported).

Why: issue 27 asks for no import circles and no upward imports between camkit's
modules; this prints both so the figures can be re-measured after every change.

An edge A -> B is any `import camkit.B` / `from camkit.B import ...` /
`from camkit import B` in module A, at module level or inside a function
(`if TYPE_CHECKING:` blocks are skipped: they never run). Names resolve to the
module that defines them (camkit.crawl.ledger, or the package camkit.crawl).

Printed:
- cycles: strongly connected components of more than one module (Tarjan), each
  with one concrete circle through it;
- upward imports: an edge from a module into a package that contains it
  (camkit.crawl.ledger -> camkit.crawl), i.e. a lower piece reaching up;
- function-level imports of camkit modules outside camkit/cli/ (count and list);
- with --cost, what each of them is there for: the third-party packages importing the target
  after its module would load (torch, matplotlib, ...), measured in a fresh interpreter per pair.
  An import that loads none could sit at the top of its module (issue 27 moved 56 such);
  the rest keep a lighter module light (`camkit --help`, the light Space without torch).

Run:  python scripts/import_graph.py [--list] [--cost]
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "camkit"


def module_name(path: Path) -> str:
    """Dotted name of a file under ROOT (a package's __init__ is the package)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every camkit module by dotted name."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool):
    """Yield (import node, in_function) for every import that can run."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                yield from _walk(sub, in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known camkit module that `name` lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(node: ast.AST, here: str, known: dict[str, Path]) -> list[str]:
    """Camkit modules one import statement reaches."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package holding `here`
            pkg = here.split(".")
            if not known[here].name == "__init__.py":
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names] + [base]
        # `from camkit.x import y`: y is a submodule only if it is a known module
        names = [n for n in names if n == base or n in known]
    hits = {_resolve(n, known) for n in names if n == "camkit" or n.startswith("camkit.")}
    return sorted(h for h in hits if h and h != here)


def graph(known: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """Edges (module -> imported modules) and the function-level imports (module, target, line)."""
    edges: dict[str, set[str]] = {m: set() for m in known}
    local: list[tuple[str, str, int]] = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, in_function in _walk(tree, False):
            for target in _targets(node, mod, known):
                edges[mod].add(target)
                if in_function:
                    local.append((mod, target, node.lineno))
    return edges, local


def strong_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def one_circle(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest circle through comp[0] inside the component (breadth-first)."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges from a module into a package that contains it."""
    return sorted((a, b) for a, bs in edges.items() for b in bs if a.startswith(b + "."))


# what a function-level import may be there to keep out of a lighter module's start-up
HEAVY = frozenset({"torch", "torchvision", "fastai", "timm", "matplotlib", "numpy", "PIL", "scipy", "sklearn",
                   "pandas", "onnx", "onnxruntime", "gradio", "icrawler", "requests", "bs4", "cleanlab"})
_COST = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1]); before = {m.split('.')[0] for m in sys.modules}\n"
    "importlib.import_module(sys.argv[2]); after = {m.split('.')[0] for m in sys.modules}\n"
    "print(json.dumps(sorted(after - before)))\n"
)


def cost(module: str, target: str) -> list[str]:
    """The HEAVY packages `import target` loads in a fresh interpreter that has imported `module`."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _COST, module, target], capture_output=True,
                         text=True, check=True, cwd=ROOT.parent).stdout
    return sorted(set(json.loads(out)) & HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list every function-level import")
    parser.add_argument("--cost", action="store_true", help="what each function-level import keeps out of its "
                        "module's start-up (a fresh interpreter per pair; about a minute)")
    args = parser.parse_args()
    known = modules()
    edges, local = graph(known)
    comps = strong_components(edges)
    ups = upward(edges)
    outside_cli = [x for x in local if not x[0].startswith("camkit.cli")]
    print(f"modules: {len(known)}  edges: {sum(map(len, edges.values()))}")
    print(f"cycles (strongly connected components): {len(comps)}")
    for comp in comps:
        print(f"  {len(comp)} modules: {' '.join(comp)}")
        print(f"    e.g. {' -> '.join(one_circle(comp, edges))}")
    print(f"upward imports: {len(ups)}")
    for a, b in ups:
        print(f"  {a} -> {b}")
    print(f"function-level camkit imports outside camkit/cli/: {len(outside_cli)}")
    if args.list:
        for mod, target, line in outside_cli:
            print(f"  {mod}:{line} -> {target}")
    if args.cost:
        pairs = sorted({(mod, target) for mod, target, _ in outside_cli})
        costs = {pair: cost(*pair) for pair in pairs}
        free = [pair for pair in pairs if not costs[pair]]
        print(f"function-level imports by what they keep out of start-up ({len(pairs)} module pairs):")
        for (mod, target), heavy in costs.items():
            print(f"  {mod} -> {target}: {', '.join(heavy) or 'nothing (could move to the top)'}")
        print(f"pairs that load nothing heavy: {len(free)}")


if __name__ == "__main__":
    main()
