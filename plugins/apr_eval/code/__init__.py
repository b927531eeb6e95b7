"""Code-generation evaluation: problems, prompts, generation, extraction, sandboxed scoring.

The evaluate plugins (`apr_eval.humaneval`, `apr_eval.mbpp`, `apr_eval.codejsonl`) are thin
subclasses of `apr_eval.code.task.CodeTask`; prompt strategies live in `apr_eval.prompting`.
"""
