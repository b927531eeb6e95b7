"""Instruction data for training and teacher-forced evaluation: jsonl in the layouts people use,
tokenized with the model's own tokenizer and chat template, with the answer tokens marked.

Layouts, detected per line:

- ``{"instruction", "input"?, "output"}`` (Alpaca): the prompt is the instruction, then a blank
  line and the input when there is one; the answer is the output;
- ``{"prompt", "completion"}``;
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the chat template; the answer is
  every assistant turn;
- ``{"text"}``: plain text, every token is trained on.

For a model with a chat template the prompt becomes one user turn rendered with the generation
prompt, and the answer is the assistant's content followed by the template's end-of-turn text
(found by rendering); without one the prompt is plain text and the answer ends with the
tokenizer's EOS token. Prompt and answer are tokenized separately and concatenated, so the
boundary between them is exact. By default only answer tokens count in the loss
(``train_on_prompt`` makes every token count). A malformed line is an error naming the file
and line number, raised while reading, before any training starts.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AprError

LAYOUTS = ("alpaca", "prompt", "messages", "text")
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Record:
    """One parsed line: its layout and the fields it carries, plus where it came from."""

    layout: str
    prompt: str = ""
    answer: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    where: str = ""


@dataclass
class Example:
    """A tokenized record: ``ids`` and ``mask`` (True where the token is a loss target)."""

    ids: list[int]
    mask: list[bool]
    where: str = ""

    @property
    def targets(self) -> int:
        return sum(self.mask[1:])


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise AprError(f"{where}: field {key!r} must be a string")
    return value


def parse(row: Any, where: str) -> Record:
    """Validate one jsonl record and tell its layout."""
    if not isinstance(row, dict):
        raise AprError(f"{where}: expected a JSON object")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise AprError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise AprError(f"{where}: message {i} needs a role ({', '.join(ROLES)}) and string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise AprError(f"{where}: no assistant message to train on")
        return Record("messages", messages=[{"role": m["role"], "content": m["content"]} for m in msgs],
                      where=where)
    if "instruction" in row or "output" in row:
        instruction, inp = _text(row, "instruction", where), _text(row, "input", where, required=False)
        prompt = instruction + (f"\n\n{inp}" if inp.strip() else "")
        return Record("alpaca", prompt=prompt, answer=_text(row, "output", where), where=where)
    if "prompt" in row or "completion" in row:
        return Record("prompt", prompt=_text(row, "prompt", where), answer=_text(row, "completion", where),
                      where=where)
    if "text" in row:
        return Record("text", text=_text(row, "text", where), where=where)
    raise AprError(f"{where}: no known layout (expected instruction/output, prompt/completion, messages or "
                   f"text fields)")


def read_records(path: str | Path) -> list[Record]:
    """Every record of a jsonl file (``.jsonl`` or ``.jsonl.gz``), validated line by line."""
    import gzip

    p = Path(path)
    if not p.is_file():
        raise AprError(f"no such data file: {path}")
    opener = gzip.open if p.suffix == ".gz" else open
    records = []
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{p}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AprError(f"{where}: not valid JSON ({exc.msg})") from None
                records.append(parse(row, where))
    except UnicodeDecodeError:
        raise AprError(f"{p}: not UTF-8 text") from None
    except (OSError, EOFError) as exc:  # a corrupt or non-gzip .gz
        raise AprError(f"{p}: cannot read: {exc}") from None
    if not records:
        raise AprError(f"{p}: no records; the file is empty")
    return records


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Formatter:
    """Turns records into token ids and answer masks for one model's tokenizer and chat template."""

    def __init__(self, tokenizer, chat: bool | None = None, train_on_prompt: bool = False) -> None:
        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise AprError("--chat needs a model with a chat template")
        self.train_on_prompt = train_on_prompt
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise AprError("the model's tokenizer has no EOS token; training data needs one to end answers")

    def _encode(self, text: str, special: bool = False) -> list[int]:
        from ..torch_bridge import quiet_transformers

        with quiet_transformers():
            return self.tok(text, add_special_tokens=special, return_attention_mask=False)["input_ids"]

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def example(self, record: Record) -> Example:
        if record.layout == "text":
            ids = self._encode(record.text, special=True) + [self.eos]
            return Example(ids, [True] * len(ids), record.where)
        if record.layout == "messages":
            return self._messages(record)
        if self.chat:
            turns = [{"role": "user", "content": record.prompt}]
            prompt_text = self._render(turns, True)
            full = self._render(turns + [{"role": "assistant", "content": record.answer}], False)
            if not full.startswith(prompt_text):
                raise AprError("the chat template does not render the conversation as prompt + answer; "
                               "pass --no-chat to train on plain prompts")
            prompt_ids = self._encode(prompt_text)
            answer_ids = self._encode(full[len(prompt_text):])
            if not answer_ids or answer_ids[-1] != self.eos:
                answer_ids.append(self.eos)
        else:
            prompt_ids = self._encode(record.prompt, special=True)
            answer_ids = self._encode(record.answer) + [self.eos]
        ids = prompt_ids + answer_ids
        mask = [self.train_on_prompt] * len(prompt_ids) + [True] * len(answer_ids)
        return Example(ids, mask, record.where)

    def _messages(self, record: Record) -> Example:
        """Render the conversation turn by turn: each assistant turn's tokens are answer tokens."""
        if not self.chat:
            raise AprError(f"{record.where}: 'messages' needs a model with a chat template")
        ids: list[int] = []
        mask: list[bool] = []
        rendered = ""
        for i, msg in enumerate(record.messages):
            if msg["role"] == "assistant":
                head = self._render(record.messages[:i], True)
                if not head.startswith(rendered):
                    raise AprError(f"{record.where}: the chat template re-renders earlier turns; cannot mask")
                piece = self._encode(head[len(rendered):])
                ids += piece
                mask += [self.train_on_prompt] * len(piece)
                rendered = head
            text = self._render(record.messages[: i + 1], False)
            if not text.startswith(rendered):
                raise AprError(f"{record.where}: the chat template re-renders earlier turns; cannot mask")
            piece = self._encode(text[len(rendered):])
            ids += piece
            mask += [msg["role"] == "assistant" or self.train_on_prompt] * len(piece)
            rendered = text
        return Example(ids, mask, record.where)


def tokenize(records: list[Record], formatter: Formatter, max_seq_len: int) -> tuple[list[Example], int]:
    """Examples cut to ``max_seq_len`` tokens; returns them and how many were truncated. Examples
    left with no answer token inside the window are dropped (they teach nothing)."""
    out, truncated = [], 0
    for record in records:
        ex = formatter.example(record)
        if len(ex.ids) > max_seq_len:
            ex = Example(ex.ids[:max_seq_len], ex.mask[:max_seq_len], ex.where)
            truncated += 1
        if ex.targets:
            out.append(ex)
    return out, truncated


def pack(examples: list[Example], max_seq_len: int) -> list[Example]:
    """Concatenate examples into sequences of at most ``max_seq_len`` tokens (greedy, in order);
    each example stays whole, masks travel with their tokens, and no target crosses examples."""
    packed: list[Example] = []
    ids: list[int] = []
    mask: list[bool] = []
    for ex in examples:
        if ids and len(ids) + len(ex.ids) > max_seq_len:
            packed.append(Example(ids, mask, "packed"))
            ids, mask = [], []
        ids = ids + ex.ids
        mask = mask + [False] + ex.mask[1:] if mask else list(ex.mask)
    if ids:
        packed.append(Example(ids, mask, "packed"))
    return packed


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded held-out split: (train, eval) with ``round(fraction * n)`` (at least one) held out."""
    if not fraction:
        return examples, []
    n_eval = max(1, round(fraction * len(examples)))
    if n_eval >= len(examples):
        raise AprError(f"--eval-split {fraction} leaves no training examples out of {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
