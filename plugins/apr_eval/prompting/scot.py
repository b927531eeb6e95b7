"""Structured Chain-of-Thought (SCoT): a plan built from program structures, then the code.

Li et al. 2023/2025, "Structured Chain-of-Thought Prompting for Code Generation" (ACM TOSEM):
the intermediate reasoning is written with the three basic structures of programs — sequence,
branch and loop — after stating the input and output, and the code follows the plan. The
playbook found it hurts models of 7B and below (-3.05pp).
"""


from .reasoning import ReasoningStrategy


class StructuredChainOfThought(ReasoningStrategy):
    name = "scot"
    summary = "a structured plan (input/output, sequence, branch, loop), then the code"
    paper = "Li et al. 2023, Structured Chain-of-Thought Prompting for Code Generation (arXiv:2305.06599)"
    steps = ("First, write a structured plan in pseudo-code: state the input and the output, then "
             "the steps using only sequence, branch (if/else) and loop (for/while) structures.")
    heading = "Input:"
