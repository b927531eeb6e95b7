"""Few-shot prompting: solved exemplars before the task, as format priming.

The default is the single trivial ``add(a, b)`` exemplar, which scored best in the playbook
(87.20% vs 85.98% for three concrete exemplars on a 7B model); ``--exemplars PATH`` takes any
jsonl in HumanEval layout (with ``canonical_solution``) or MBPP layout (with ``code``). Chat
models see each exemplar as a previous user/assistant turn; base models see them concatenated
in the benchmark's own format.
"""


from ..code.problems import Problem
from .base import CODE_FENCE, FENCE_STOPS, Prompt, PromptOptions, PromptStrategy, describe_task, mbpp_base_text

ADD_PROMPT = 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n'
DEFAULT_EXEMPLARS = {
    "humaneval": Problem("exemplar/add", "humaneval", "add", prompt=ADD_PROMPT, reference="    return a + b\n"),
    "mbpp": Problem("exemplar/add", "mbpp", "add", text="Write a function to add two numbers.",
                    test_list=("assert add(2, 3) == 5",), reference="def add(a, b):\n    return a + b\n"),
}


def exemplar_solution(ex: Problem) -> str:
    """The exemplar's whole solution as code (HumanEval references are bodies)."""
    if ex.layout == "humaneval":
        return ex.prompt + ex.reference
    return ex.reference


class FewShot(PromptStrategy):
    name = "few-shot"
    summary = "solved exemplars first (default: one trivial add(a, b)); --exemplars for your own"
    paper = "Brown et al. 2020 (few-shot prompting); Austin et al. 2021 (MBPP 3-shot format)"

    def exemplars(self, problem: Problem, options: PromptOptions) -> list[Problem]:
        return options.exemplars or [DEFAULT_EXEMPLARS[problem.layout]]

    def chat_prompt(self, problem: Problem, options: PromptOptions) -> Prompt:
        messages = []
        for ex in self.exemplars(problem, options):
            messages.append({"role": "user", "content": self.instruction(ex, options)})
            messages.append({"role": "assistant", "content": f"{CODE_FENCE}{exemplar_solution(ex).rstrip()}\n```"})
        messages.append({"role": "user", "content": self.instruction(problem, options)})
        return Prompt(messages=messages, prefill=CODE_FENCE, stops=FENCE_STOPS)

    def completion_prompt(self, problem: Problem, options: PromptOptions) -> Prompt:
        base = super().completion_prompt(problem, options)
        shots = []
        for ex in self.exemplars(problem, options):
            if problem.layout == "humaneval":
                shots.append(exemplar_solution(ex).rstrip() + "\n\n\n")
            else:
                shots.append(mbpp_base_text(ex, options) + ex.reference.rstrip() + "\n[DONE]\n\n")
        return Prompt(text="".join(shots) + base.text, stops=base.stops)

    def contract(self, workdir):
        out = super().contract(workdir)
        p = DEFAULT_EXEMPLARS["humaneval"]
        assert "return a + b" in self.build(p, False, PromptOptions()).text, "few-shot: exemplar missing"
        assert describe_task(p, PromptOptions()) in self.build(p, True, PromptOptions()).messages[0]["content"]
        return out
