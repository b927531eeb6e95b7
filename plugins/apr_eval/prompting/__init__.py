"""Prompt strategies for the code tasks, each a registered ``prompt-strategy`` technique.

A third-party package adds one by subclassing `apr_eval.prompting.base.PromptStrategy` and
registering an instance through ``apr_register_techniques``; ``apr eval --prompt-strategy NAME``
then finds it like the built-ins (`standard`, `few-shot`, `cgo`, `scot`).
"""
