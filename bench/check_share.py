"""The share of each module's code lines that refuse input (raise, or check before raising), and its functions over
30 lines: the figures of the readability review (issue 24). ``python bench/check_share.py [REV]`` reads the
modules at git revision REV (default: the working tree)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODULES = ["generations.py", "engine.py", "experiment.py", "runs.py", "preflight.py", "losses.py", "report.py"]


def source(module: str, rev: str | None) -> str | None:
    path = f"src/banets/{module}"
    if rev is None:
        return Path(path).read_text() if Path(path).exists() else None
    done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def code_lines(tree: ast.Module, text: str) -> set[int]:
    """Lines holding code: not blank, not a comment, not a docstring."""
    docs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            first = node.body[0]
            docs.update(range(first.lineno, first.end_lineno + 1))
    lines = text.split("\n")
    return {i + 1 for i, line in enumerate(lines)
            if line.strip() and not line.strip().startswith("#") and i + 1 not in docs}


def refusal_lines(tree: ast.Module) -> set[int]:
    """Lines of raise statements, of ifs that only raise, and of functions named check_*."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        only_raises = isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body) and not node.orelse
        checker = isinstance(node, ast.FunctionDef) and node.name.startswith("check")
        if isinstance(node, ast.Raise) or only_raises or checker:
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"| module ({rev or 'working tree'}) | code lines | refusal lines | share | functions over 30 lines |")
    print("|---|---|---|---|---|")
    for module in MODULES:
        text = source(module, rev)
        if text is None:
            continue
        tree = ast.parse(text)
        code = code_lines(tree, text)
        refusals = refusal_lines(tree) & code
        long = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and len(code & set(range(n.lineno, n.end_lineno + 1))) > 30]
        print(f"| {module} | {len(code)} | {len(refusals)} | {100 * len(refusals) / len(code):.0f}% | {', '.join(long) or '-'} |")


if __name__ == "__main__":
    main()
