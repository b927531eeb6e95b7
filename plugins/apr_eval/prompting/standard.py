"""The standard prompt: the task alone (the playbook's baseline, best for 32B and MBPP).

Chat models get the task and an opened ```python fence to complete; base models continue the
HumanEval prompt, or get the MBPP paper's prompt (task, test assertions, ``[BEGIN]``).
"""


from .base import PromptStrategy


class Standard(PromptStrategy):
    name = "standard"
    summary = "the task alone; chat models complete an opened code fence"
    paper = "Chen et al. 2021 (HumanEval); Austin et al. 2021 (MBPP prompt format)"
