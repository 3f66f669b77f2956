"""The treesae code a module runs: its file and every treesae module it imports, transitively, at module or
function level (importing ``a.b`` runs ``a/__init__.py`` too). Found by parsing (``ast``): treesae imports no
module by a name computed at run time. dvc.yaml lists exactly this closure as each stage's code
(tests/test_dvc_deps.py), and stage 02 keys the SAEs it trained by its ``digest``, so the two agree on what
"the code changed" means.
"""
import ast
import hashlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]


def source(module: str) -> Path | None:
    """The file that importing ``module`` runs, if it is ours."""
    p = SRC / module.replace(".", "/")
    return next((f for f in (p / "__init__.py", p.with_suffix(".py")) if module and f.exists()), None)


def imported(tree: ast.AST, module: str = "") -> set[str]:
    """Modules that ``tree`` (the code of ``module``) imports, with the packages above them."""
    package = module if source(module) and source(module).name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[: package.count(".") + 2 - node.level]
                base = ".".join(up + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names if source(f"{base}.{a.name}")}
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def closure(roots: set[str], stop: frozenset[str] = frozenset()) -> set[Path]:
    """The files of every treesae module that importing ``roots`` runs (``stop``: modules not followed)."""
    ours = lambda names: {n for n in names if n.split(".")[0] == "treesae" and source(n)} - set(stop)  # noqa: E731
    todo, seen = ours(roots), set()
    while todo:
        m = todo.pop()
        seen.add(m)
        todo |= ours(imported(ast.parse(source(m).read_text()), m)) - seen
    return {source(m) for m in seen}


def digest(module: str) -> str:
    """sha256 over the paths (relative to src/) and bytes of ``closure({module})``: changes when any code it runs does."""
    h = hashlib.sha256()
    for f in sorted(closure({module}), key=lambda p: p.relative_to(SRC).as_posix()):
        h.update(f.relative_to(SRC).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
