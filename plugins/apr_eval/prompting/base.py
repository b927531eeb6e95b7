"""What a prompt strategy is, and the task descriptions every strategy builds on.

A strategy turns a `Problem` into a `Prompt`: chat messages (instruct models, rendered with the
model's own chat template) or plain text (base models), the text put in the model's mouth
(``prefill``, e.g. an opening ```python fence) and the stop sequences that end the reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apr_core.technique import Technique

from ..code.problems import Problem

KIND = "prompt-strategy"
CODE_FENCE = "```python\n"
# Codex's stop sequences for HumanEval continuations (Chen et al. 2021) plus a closing fence.
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n```")
MBPP_STOPS = ("[DONE]", "\nassert ", "\nprint(", "\nif __name__", "\n```")
FENCE_STOPS = ("\n```",)


@dataclass
class PromptOptions:
    """Per-run choices shared by all strategies."""

    test_assertions: bool = True
    exemplars: list[Problem] = field(default_factory=list)


@dataclass
class Prompt:
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    prefill: str = ""
    stops: tuple[str, ...] = ()


def describe_task(problem: Problem, options: PromptOptions) -> str:
    """The user request for an instruct model, shared by the strategies."""
    if problem.layout == "humaneval":
        return f"Complete the following Python function.\n\n```python\n{problem.prompt.rstrip()}\n```"
    text = problem.text.strip()
    if options.test_assertions:
        tests = "\n".join(problem.test_list)
        return f"{text}\nYour code should pass these tests:\n\n```python\n{tests}\n```"
    return f"{text}\nName the function `{problem.entry_point}`."


def mbpp_base_text(problem: Problem, options: PromptOptions) -> str:
    """The MBPP paper's prompt for base models: task, tests, then ``[BEGIN]``."""
    tests = "\n".join(problem.test_list) if options.test_assertions else \
        f"(name the function {problem.entry_point})"
    return (f"You are an expert Python programmer, and here is your task: {problem.text.strip()} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def base_stops(problem: Problem) -> tuple[str, ...]:
    return HUMANEVAL_STOPS if problem.layout == "humaneval" else MBPP_STOPS


class PromptStrategy(Technique):
    """Base class: override `chat_prompt` and `completion_prompt` (or just `instruction`)."""

    kind = KIND
    usage = "apr eval --prompt-strategy"

    def instruction(self, problem: Problem, options: PromptOptions) -> str:
        return (describe_task(problem, options) +
                "\n\nWrite the complete function in a single ```python code block.")

    def chat_prompt(self, problem: Problem, options: PromptOptions) -> Prompt:
        return Prompt(messages=[{"role": "user", "content": self.instruction(problem, options)}],
                      prefill=CODE_FENCE, stops=FENCE_STOPS)

    def completion_prompt(self, problem: Problem, options: PromptOptions) -> Prompt:
        if problem.layout == "humaneval":
            return Prompt(text=problem.prompt, stops=HUMANEVAL_STOPS)
        return Prompt(text=mbpp_base_text(problem, options), stops=MBPP_STOPS)

    def build(self, problem: Problem, chat: bool, options: PromptOptions) -> Prompt:
        return self.chat_prompt(problem, options) if chat else self.completion_prompt(problem, options)

    def contract(self, workdir) -> dict[str, Any]:
        """The strategy's own contract: deterministic prompts for both layouts and both modes."""
        he = Problem("t/0", "humaneval", "inc", prompt='def inc(x):\n    """Add one."""\n',
                     test="def check(f):\n    assert f(1) == 2\n")
        mb = Problem("t/1", "mbpp", "inc", text="Write a function to add one.",
                     test_list=("assert inc(1) == 2",))
        opts = PromptOptions()
        out = {}
        for p in (he, mb):
            for chat in (True, False):
                a, b = self.build(p, chat, opts), self.build(p, chat, opts)
                assert a == b, f"prompt-strategy {self.name}: prompts not deterministic"
                assert (a.messages if chat else a.text), f"prompt-strategy {self.name}: empty prompt"
                body = " ".join(m["content"] for m in a.messages) if chat else a.text
                assert "inc" in body, f"prompt-strategy {self.name}: the task is missing from the prompt"
                out[f"{p.layout}-{'chat' if chat else 'base'}"] = len(body)
        return out
