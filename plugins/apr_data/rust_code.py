"""Documented Rust functions: ``///`` doc comment + signature -> body, by a token scanner.

The scanner knows what can hide a brace in Rust: string literals (with escapes, spanning lines),
raw strings ``r#"..."#`` and their byte/C forms, byte strings, character literals (``'{'``,
``'\\''``, ``'\\u{7d}'``) as opposed to lifetimes (``'a``), line comments and nested block
comments. An item is a ``fn NAME`` with a body; qualifiers (``pub(crate) const async unsafe
extern "C"``) and attributes may sit between it and its doc comment. Functions declared inside
macros (their tokens contain ``$``) and bodiless declarations are skipped; methods record their
``impl``/``trait`` header as owner.
"""

from __future__ import annotations

from .lexing import (Function, LexError, Token, comment_at, cut, header_before, match_brackets, punct,
                     quoted_end)

# Longest first. ``<`` and ``>`` are never merged (``Vec<Vec<u8>>``), except in ``->`` and ``=>``.
PUNCT = ("..=", "...", "->", "=>", "::", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "%=",
         "^=", "&=", "|=", "..")
QUALIFIERS = {"pub", "const", "async", "unsafe", "extern", "default", "crate"}


def _raw_end(src: str, i: int) -> int | None:
    """``i`` at the first ``#`` or ``"`` after ``r``: the raw string's end, or None if not one."""
    j = i
    while j < len(src) and src[j] == "#":
        j += 1
    if j >= len(src) or src[j] != '"':
        return None
    close = '"' + "#" * (j - i)
    k = src.find(close, j + 1)
    if k < 0:
        raise LexError("unterminated raw string")
    return k + len(close)


def _char_end(src: str, i: int) -> int | None:
    """``i`` at a ``'``: the end of a character literal there, or None for a lifetime/label."""
    if src.startswith("\\", i + 1):
        k = src.find("'", i + 3)
        if k < 0 or "\n" in src[i:k]:
            raise LexError("unterminated character literal")
        return k + 1
    if i + 2 < len(src) and src[i + 2] == "'":
        return i + 3
    return None


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    n, i = len(src), 0
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        comment = comment_at(src, i, nested=True, line_docs=True)
        if comment is not None:
            tokens.append(comment)
            i = comment.end
            continue
        if c == '"':
            i = quoted_end(src, i + 1, '"', multiline=True)
            tokens.append(Token("str", src[start:i], start, i))
            continue
        if c == "'":
            end = _char_end(src, i)
            if end is not None:
                tokens.append(Token("str", src[start:end], start, end))
                i = end
                continue
            j = i + 1
            while j < n and _is_ident_char(src[j]):
                j += 1
            tokens.append(Token("id", src[start:j], start, j))  # lifetime or loop label
            i = j
            continue
        if _is_ident_char(c):
            j = i
            while j < n and _is_ident_char(src[j]):
                j += 1
            word = src[i:j]
            end = None
            if word in ("r", "br", "cr") and j < n and src[j] in '#"':
                end = _raw_end(src, j)
                if end is None and word == "r" and src[j] == "#":  # raw identifier r#type
                    k = j + 1
                    while k < n and _is_ident_char(src[k]):
                        k += 1
                    j = k
            elif word in ("b", "c") and j < n and src[j] == '"':
                end = quoted_end(src, j + 1, '"', multiline=True)
            elif word == "b" and j < n and src[j] == "'":
                end = _char_end(src, j)
                if end is None:
                    raise LexError("bad byte literal")
            if end is not None:
                tokens.append(Token("str", src[start:end], start, end))
                i = end
                continue
            if c.isdigit():  # numbers: 1.5e3, 0x1f_u8; never swallow a range's ``..``
                while j + 1 < n and src[j] == "." and src[j + 1].isdigit():
                    j += 2
                    while j < n and _is_ident_char(src[j]):
                        j += 1
            tokens.append(Token("id", src[start:j], start, j))
            i = j
            continue
        tok = punct(src, i, PUNCT)
        tokens.append(tok)
        i = tok.end
    return tokens


def _doc_start(tokens: list[Token], match: list[int], fn: int) -> int | None:
    """Offset of the first doc comment that documents the ``fn`` at index ``fn``, if any."""
    p = fn - 1
    while p >= 0:  # qualifiers: pub, pub(crate), const, async, unsafe, extern "C"
        tok = tokens[p]
        if tok.kind == "id" and tok.text in QUALIFIERS or tok.kind == "str" and tok.text.startswith('"'):
            p -= 1
        elif tok.text == ")" and tok.kind == "punct" and match[p] > 0 and tokens[match[p] - 1].text == "pub":
            p = match[p] - 1
        else:
            break
    first = None
    while p >= 0:
        tok = tokens[p]
        if tok.kind == "punct" and tok.text == "]" and match[p] > 0 and tokens[match[p] - 1].text == "#":
            p = match[p] - 2  # an attribute: #[inline]
        elif tok.kind == "doc":
            first = tok.start
            p -= 1
        elif tok.kind == "comment" and not tok.text.startswith(("//!", "/*!")):
            p -= 1
        else:
            break
    return first


def _owner(src: str, tokens: list[Token], parent: list[int], fn: int) -> str | None:
    brace = parent[fn]
    if brace < 0:
        return None
    head = header_before(tokens, brace)
    for tok in head:
        if tok.kind == "id" and tok.text in ("impl", "trait"):
            return " ".join(src[tok.start:head[-1].end].split())
    return None


def _body_brace(tokens: list[Token], match: list[int], j: int) -> int | None:
    """From after a function's name: the index of its body's ``{``, or None for a declaration
    (``;``). Generics, parameters and the return type are skipped; a ``{`` inside ``<...>`` is a
    const-generic block, not the body."""
    angle = 0
    while j < len(tokens):
        t = tokens[j]
        if t.kind == "punct":
            if t.text in ("(", "["):
                j = match[j]
            elif t.text == "<":
                angle += 1
            elif t.text == ">":
                angle = max(0, angle - 1)
            elif t.text == "{":
                if angle == 0:
                    return j
                j = match[j]
            elif t.text == "}" or (t.text == ";" and angle == 0):
                return None
        j += 1
    return None


def extract(src: str) -> list[Function]:
    """Every documented Rust ``fn`` with a body in ``src``; `LexError` if the file cannot be scanned."""
    tokens = tokenize(src)
    match, parent = match_brackets(tokens)
    found = []
    for f, tok in enumerate(tokens):
        if tok.kind != "id" or tok.text != "fn" or f + 1 >= len(tokens) or tokens[f + 1].kind != "id":
            continue
        doc = _doc_start(tokens, match, f)
        if doc is None:
            continue
        body = _body_brace(tokens, match, f + 2)
        if body is None:
            continue
        close = match[body]
        if any(t.kind == "punct" and t.text == "$" for t in tokens[f:close]):
            continue  # written inside a macro: $name metavariables, not Rust
        fn = cut(src, doc, tokens[body].start, tokens[close].start, tokens[f + 1].text,
                 _owner(src, tokens, parent, f))
        if fn is not None:
            found.append(fn)
    return found
