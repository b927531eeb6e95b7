"""Pull the code out of a model's reply, the way the published harnesses clean completions.

* Fenced blocks (```python ... ```): the first block defining the entry point, else the first
  block; an unterminated last block runs to the end (the reply hit the token limit).
* Plain continuations are cut at the first stop sequence (Codex's ``\\ndef``, ``\\nclass``,
  ``\\nif``, ``\\nprint``, ``\\n#`` for HumanEval; ``[DONE]`` for MBPP) — see `STOPS`.
* Trailing chatter: lines are dropped from the end until the code parses (with the prompt in
  front for a body continuation).
* For whole-module replies, top-level statements other than imports, definitions and
  assignments (``if __name__ == ...`` blocks, example calls, prints, stray asserts) are removed,
  as EvalPlus's sanitizer does, so example code cannot fail or fake the tests.
"""

from __future__ import annotations

import ast
import re

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
        ast.AnnAssign)


def fenced_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1).lower() in ("", "python", "py", "python3")]


def cut_at_stops(text: str, stops) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def trim_trailing(code: str, prefix: str = "") -> str:
    """Drop lines from the end until ``prefix + code`` parses (unchanged if nothing parses)."""
    lines = code.rstrip().split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(prefix + candidate):
            return candidate + "\n"
    return code


def keep_definitions(code: str) -> str:
    tree = ast.parse(code)
    lines = code.split("\n")
    kept = []
    for node in tree.body:
        if isinstance(node, KEEP):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1: node.end_lineno]))
    return "\n".join(kept) + "\n"


def extract_code(reply: str, entry_point: str, prompt: str = "", stops=(), prefill: str = "") -> str:
    """The code in ``reply``; ``prefill`` is text the prompt already put in the reply's mouth."""
    text = prefill + reply
    blocks = fenced_blocks(text)
    if blocks:
        defining = [b for b in blocks if re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\b", b, re.M)]
        code = (defining or blocks)[0]
    else:
        code = cut_at_stops(reply, stops)
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\b", code, re.M):
        code = trim_trailing(code)
        return keep_definitions(code) if _parses(code) else code
    return trim_trailing(code, prefix=prompt)
