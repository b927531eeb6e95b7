"""Evaluate plugins for apr: perplexity now; code benchmarks (HumanEval, MBPP) join here."""
