"""The data plugin: ``apr data``, datasets built offline from local source code.

Instruction-tuning jsonl per language (Python, Rust, TypeScript) for the specialists of the merge
tournament, and the held-out evaluation text of each language. See docs/data.md.
"""
