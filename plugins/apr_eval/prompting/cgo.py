"""Chain of Grounded Objectives (CGO): list the objectives the code must meet, then write it.

Yeo et al. 2025, "Chain of Grounded Objectives: Bridging Process and Goal-oriented Prompting
for Code Generation" (ECOOP 2025): instead of a step-by-step process, the model states the
goal-oriented requirements the implementation must satisfy, grounded in the task's text and
examples, and implements against them. The playbook measured it slightly below standard
(-1.83pp on a 7B model).
"""


from .reasoning import ReasoningStrategy


class ChainOfGroundedObjectives(ReasoningStrategy):
    name = "cgo"
    summary = "state the objectives the code must satisfy (grounded in the task), then the code"
    paper = "Yeo et al. 2025, Chain of Grounded Objectives (arXiv:2501.13978)"
    steps = ("First, list the objectives the function must satisfy as short bullet points, grounded "
             "in the description and its examples: what it receives, what it must return, and each "
             "condition or edge case it has to handle.")
    heading = "Objectives:\n-"
