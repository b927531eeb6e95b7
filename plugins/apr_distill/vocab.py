"""Teacher and student must speak the same tokens: compare the token tables, find the shared ids.

Models of one family often pad the embedding matrix to a round number of rows (Qwen2.5-Coder
0.5B has 151936, 7B has 152064) over the same tokenizer. The distributions are then compared on
the ids both have rows for: both are *truncated* to the shared ids, never zero-padded (a zero
logit still takes probability mass). The tokenizers must map every token to the same id
within those rows (added tokens included), and no token of either table may sit beyond them
(it would be a label one model cannot predict); anything else is a different tokenizer and is
refused with one line.
"""

from __future__ import annotations

from apr_core.errors import AprError


def token_table(model) -> dict[str, int]:
    """The tokenizer's token -> id map (added tokens included)."""
    from apr_core.torch_bridge import load_tokenizer

    return dict(load_tokenizer(model).get_vocab())


def rows(model) -> int:
    return int(model.text_config()["vocab_size"])


def shared_vocabulary(teachers, student) -> tuple[int, dict]:
    """The number of leading ids every model shares, and a note for the report; `AprError` when
    the tokenizers differ."""
    student_table = token_table(student)
    n = min([rows(student)] + [rows(t) for t in teachers])
    sizes = {"student": rows(student)}
    for i, teacher in enumerate(teachers):
        table = token_table(teacher)
        if table != student_table:
            only_t = sorted(set(table) - set(student_table))
            only_s = sorted(set(student_table) - set(table))
            moved = sorted(t for t in set(table) & set(student_table) if table[t] != student_table[t])
            example = (f"token {only_t[0]!r} only in the teacher" if only_t else
                       f"token {only_s[0]!r} only in the student" if only_s else
                       f"token {moved[0]!r} is id {table[moved[0]]} vs {student_table[moved[0]]}")
            raise AprError(f"teacher {teacher.source} and student {student.source} use different tokenizers "
                           f"({len(table)} vs {len(student_table)} tokens; {example}); distillation needs one "
                           f"tokenizer")
        sizes[f"teacher{i}" if len(teachers) > 1 else "teacher"] = rows(teacher)
    top = max(student_table.values(), default=-1)
    if top >= n:
        raise AprError(f"the tokenizer has id {top} but a model has only {n} vocabulary rows")
    note = {"vocabulary_rows": sizes, "shared_ids": n}
    if len(set(sizes.values())) > 1:
        note["vocabulary_note"] = f"padded vocabularies: the distributions are compared on the {n} shared ids"
    return n, note
