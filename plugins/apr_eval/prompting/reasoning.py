"""Shared shape of the strategies that make the model reason before it writes code.

The model first writes its intermediate text (objectives, a structured plan), then the
function in a ```python block; no fence is pre-filled and no stop sequence cuts the reasoning,
so the reply ends at end-of-turn or ``--max-tokens`` and the code is taken from its fenced
block. Base models get the same request as plain text followed by the section heading the
strategy asks for.
"""

from __future__ import annotations

from .base import Prompt, PromptOptions, PromptStrategy, describe_task


class ReasoningStrategy(PromptStrategy):
    #: what to write before the code, as an instruction
    steps: str = ""
    #: heading that starts the model's reasoning in base-model prompts
    heading: str = ""

    def instruction(self, problem, options: PromptOptions) -> str:
        return (f"{describe_task(problem, options)}\n\n{self.steps}\n"
                "Then write the complete function in a single ```python code block.")

    def chat_prompt(self, problem, options: PromptOptions) -> Prompt:
        return Prompt(messages=[{"role": "user", "content": self.instruction(problem, options)}])

    def completion_prompt(self, problem, options: PromptOptions) -> Prompt:
        return Prompt(text=f"{self.instruction(problem, options)}\n\n{self.heading}\n")
