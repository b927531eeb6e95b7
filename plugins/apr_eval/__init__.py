"""Evaluate plugins for apr: perplexity, and the code tasks (HumanEval, MBPP, any code jsonl) with
their prompt strategies and sandbox; all registered by `apr_eval.plugin`."""
