"""Documented Python functions: decorators + signature + docstring -> body, through `ast`.

Every ``def`` and ``async def`` whose first statement is a docstring and which has statements
after it, at any depth (module functions, methods, nested functions). The text is cut from the
source by the line numbers `ast` gives, so comments and formatting survive; the function's own
indentation is removed, so a method reads like a top-level function. Methods record their class.
"""

from __future__ import annotations

import ast
import warnings

from .lexing import Function, LexError, dedent


def _docstring(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str) and body[0].value.value.strip():
        return body[0]
    return None


def extract(src: str) -> list[Function]:
    """Every documented function with a body in ``src``; `LexError` if it is not valid Python."""
    src = src.replace("\r\n", "\n").replace("\r", "\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old code are not our concern
            tree = ast.parse(src)
    except (SyntaxError, ValueError) as exc:
        raise LexError(f"not valid Python: {exc}") from None
    lines = src.split("\n")
    found: list[Function] = []

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = _docstring(child)
                if doc is not None and len(child.body) > 1 and child.body[1].lineno > doc.end_lineno:
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    prefix = lines[child.lineno - 1][:child.col_offset]
                    head = dedent(lines[first - 1:doc.end_lineno], prefix)
                    body = dedent(lines[doc.end_lineno:child.end_lineno], prefix)
                    while body and not body[0].strip():
                        body.pop(0)
                    found.append(Function(first, child.name, owner, "\n".join(ln.rstrip() for ln in head),
                                          "\n".join(ln.rstrip() for ln in body), braced=False))
                visit(child, None)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"class {child.name}")
            else:
                visit(child, owner)

    visit(tree, None)
    found.sort(key=lambda f: f.line)
    return found
