"""Structure rules that keep r1lab readable, checked by `make lint` (and so by CI).

    python scripts/check_structure.py [src/r1lab]

- no module over MAX_FILE_LINES lines;
- no function or method over MAX_FUNCTION_LINES lines (from `def` to its last line, docstring
  included);
- no module imports a private name (`_x`) from another module: what is shared gets a public name;
- the engine never imports the micro world at module level (the micro world plugs into the
  engine through the same interfaces a user's task, reward or model uses).

Prints one line per violation (path:line: rule) and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
MICRO = "r1lab.micro"


def violations(path: Path, package_root: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    found = []
    lines = text.count("\n") + 1
    if lines > MAX_FILE_LINES:
        found.append(f"{path}:1: file has {lines} lines (max {MAX_FILE_LINES})")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno}: function '{node.name}' has {length} lines "
                             f"(max {MAX_FUNCTION_LINES})")
        if isinstance(node, ast.ImportFrom) and not _same_package(node, path, package_root):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private:
                found.append(f"{path}:{node.lineno}: imports private name(s) {', '.join(private)} "
                             f"from {node.module or '.'}")
    found += _micro_imports(path, tree, package_root)
    return found


def _same_package(node: ast.ImportFrom, path: Path, package_root: Path) -> bool:
    """A package may use its own private modules (`from r1lab.sandbox import _wire` inside
    r1lab/sandbox/); relative imports are within the package by definition."""
    if node.level:
        return True
    package = ".".join(("r1lab",) + path.relative_to(package_root).parts[:-1])
    return node.module == package


def _micro_imports(path: Path, tree: ast.Module, package_root: Path) -> list[str]:
    """Module-level imports of r1lab.micro from outside the micro world (and outside the
    stages and the pipeline, which wire the micro world into runs by design)."""
    relative = path.relative_to(package_root).parts
    if relative[0] in ("micro", "stages", "pipeline", "cli.py", "__init__.py"):
        return []
    found = []
    for node in tree.body:
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        for module in modules:
            if module == MICRO or module.startswith(MICRO + "."):
                found.append(f"{path}:{node.lineno}: the engine imports the micro world ({module}) at module level")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "src/r1lab")
    found = [v for path in sorted(root.rglob("*.py")) for v in violations(path, root)]
    for line in found:
        print(line)
    print(f"check_structure: {len(found)} violation(s) in {root}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
