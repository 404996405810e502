"""Size limits of the engine and the pages (issue #21): no function over 80 lines, no class
over 400 lines, no file over 700 lines in fp8demo/ and pages/.

    python scripts/check_sizes.py [FOLDER ...]

Prints one line per offender (path:line kind name: N lines) and exits 1 if there is any.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("fp8demo", "pages")
LIMITS = {"function": 80, "class": 400, "file": 700}


def lines_of(node) -> int:
    """A definition's length: from its first decorator to its last line."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return node.end_lineno - first + 1


def offenders(path: Path) -> list[str]:
    """What in one file is over a limit, as printable lines."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    total = len(text.splitlines())
    if total > LIMITS["file"]:
        found.append(f"{name}:1 file: {total} lines (limit {LIMITS['file']})")
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "function"
        elif isinstance(node, ast.ClassDef):
            kind = "class"
        else:
            continue
        length = lines_of(node)
        if length > LIMITS[kind]:
            found.append(
                f"{name}:{node.lineno} {kind} {node.name}: {length} lines (limit {LIMITS[kind]})"
            )
    return found


def main(folders) -> int:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += offenders(path)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or FOLDERS))
