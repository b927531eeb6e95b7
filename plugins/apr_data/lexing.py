"""What the brace-language scanners share: tokens, bracket matching and cutting a function out.

The Rust and TypeScript scanners turn a file into `Token`s (identifiers, punctuation, string-like
literals, comments and doc comments), so that braces inside strings, characters, template
literals, regular expressions and comments never count. `match_brackets` pairs ``()[]{}`` and
records each token's innermost enclosing ``{``; a file whose brackets do not pair is refused as a
whole (`LexError`) rather than cut at a wrong place. `cut` turns a doc comment, a signature and a
body span into the `Function` every extractor returns.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = {"(": ")", "[": "]", "{": "}"}
CLOSE = {v: k for k, v in OPEN.items()}


class LexError(ValueError):
    """The file could not be scanned (unterminated literal or comment, unbalanced brackets)."""


@dataclass(frozen=True)
class Token:
    kind: str  # id, punct, str, doc, comment
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Function:
    """One documented function: ``input`` (doc + signature) and ``output`` (its body)."""

    line: int  # 1-based line of the first line of ``input``
    name: str
    owner: str | None  # class / impl / trait it belongs to, if any
    input: str
    output: str
    braced: bool = True  # the output ends with the body's closing brace

    def body_lines(self) -> int:
        """Non-blank lines of the body, not counting the closing brace."""
        return sum(1 for ln in self.output.split("\n") if ln.strip()) - int(self.braced)


def comment_at(src: str, i: int, nested: bool, line_docs: bool) -> Token | None:
    """The comment starting at offset ``i``, or None. ``/** */`` (not ``/**/`` or ``/***``) is a
    doc comment, and so is ``///`` (not ``////``) with ``line_docs``; block comments nest with
    ``nested`` (Rust) and end at the first ``*/`` without (TypeScript)."""
    if src.startswith("//", i):
        j = src.find("\n", i)
        j = len(src) if j < 0 else j
        doc = line_docs and src.startswith("///", i) and not src.startswith("////", i)
        return Token("doc" if doc else "comment", src[i:j], i, j)
    if not src.startswith("/*", i):
        return None
    depth, j = 1, i + 2
    while depth:
        k = src.find("*/", j)
        if k < 0:
            raise LexError("unterminated block comment")
        opened = src.find("/*", j, k) if nested else -1
        if opened >= 0:
            depth, j = depth + 1, opened + 2
        else:
            depth, j = depth - 1, k + 2
    doc = src.startswith("/**", i) and not src.startswith("/**/", i) and not src.startswith("/***", i)
    return Token("doc" if doc else "comment", src[i:j], i, j)


def quoted_end(src: str, i: int, quote: str, multiline: bool) -> int:
    """Offset after the closing ``quote`` of a literal whose text starts at ``i`` (escapes skip a
    character; without ``multiline`` a newline before the quote is an error)."""
    n = len(src)
    while i < n:
        c = src[i]
        if c == "\\":
            i += 2
        elif c == quote:
            return i + 1
        elif c == "\n" and not multiline:
            break
        else:
            i += 1
    raise LexError("unterminated string literal")


def punct(src: str, i: int, multi: tuple[str, ...]) -> Token:
    """The punctuation token at ``i``: the longest of ``multi`` that matches, else one character."""
    for text in multi:
        if src.startswith(text, i):
            return Token("punct", text, i, i + len(text))
    return Token("punct", src[i], i, i + 1)


def match_brackets(tokens: list[Token]) -> tuple[list[int], list[int]]:
    """``match[i]``: index of the bracket pairing token ``i`` (-1 for others); ``parent[i]``:
    index of the innermost ``{`` enclosing token ``i`` (-1 at top level)."""
    match = [-1] * len(tokens)
    parent = [-1] * len(tokens)
    stack: list[int] = []
    braces: list[int] = []
    for i, tok in enumerate(tokens):
        parent[i] = braces[-1] if braces else -1
        if tok.kind != "punct":
            continue
        if tok.text in OPEN:
            stack.append(i)
            if tok.text == "{":
                braces.append(i)
        elif tok.text in CLOSE:
            if not stack or tokens[stack[-1]].text != CLOSE[tok.text]:
                raise LexError(f"unbalanced {tok.text!r} at offset {tok.start}")
            j = stack.pop()
            match[i], match[j] = j, i
            if tok.text == "}":
                braces.pop()
                parent[i] = braces[-1] if braces else -1
    if stack:
        raise LexError(f"unclosed {tokens[stack[-1]].text!r} at offset {tokens[stack[-1]].start}")
    return match, parent


def line_start(src: str, offset: int) -> int:
    return src.rfind("\n", 0, offset) + 1


def dedent(lines: list[str], prefix: str) -> list[str]:
    """Remove ``prefix`` (the item's indentation) from every line that has it; blank lines become
    empty; a line without it (text of a multi-line literal) is kept as written."""
    out = []
    for ln in lines:
        if not ln.strip():
            out.append("")
        elif ln.startswith(prefix):
            out.append(ln[len(prefix):])
        else:
            out.append(ln)
    return out


def cut(src: str, doc_start: int, open_brace: int, close_brace: int, name: str, owner: str | None) -> Function | None:
    """The function whose doc comment starts at offset ``doc_start`` and whose body is the
    ``{ ... }`` at offsets ``open_brace``..``close_brace``: input runs from the doc comment's line
    through the ``{``, output from the next line through the ``}``, both without the item's
    indentation. None when the doc comment does not start its line."""
    first = line_start(src, doc_start)
    prefix = src[first:doc_start]
    if prefix.strip():
        return None
    head = src[first:open_brace + 1].split("\n")
    body = src[open_brace + 1:close_brace + 1].split("\n")
    if len(body) > 1 and not body[0].strip():
        body = body[1:]
    head = [ln.rstrip() for ln in dedent(head, prefix)]
    body = [ln.rstrip() for ln in dedent(body, prefix)]
    while body and not body[0]:
        body.pop(0)
    return Function(src.count("\n", 0, first) + 1, name, owner, "\n".join(head), "\n".join(body))


def header_before(tokens: list[Token], brace: int) -> list[Token]:
    """The tokens that open the block at ``brace`` (``impl<T> Foo<T>``, ``export class A``): back
    to the previous ``;``, ``{``, ``}`` or comment."""
    i = brace - 1
    while i >= 0:
        tok = tokens[i]
        if tok.kind in ("doc", "comment") or (tok.kind == "punct" and tok.text in (";", "{", "}")):
            break
        i -= 1
    return tokens[i + 1:brace]
