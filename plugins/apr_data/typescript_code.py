"""Documented TypeScript functions: ``/** JSDoc */`` + signature -> body, by a token scanner.

The scanner knows what can hide a brace in TypeScript: single- and double-quoted strings,
template literals with ``${...}`` expressions (which may nest further templates and object
literals), regular-expression literals (told from division by the token before the ``/``), and
line and block comments. After each JSDoc comment it reads one declaration: a ``function``
(``export``, ``default``, ``async``, generators), a class method (modifiers, ``get``/``set``,
computed and ``#private`` names, decorators), or a variable or class property initialised with
an arrow function or a function expression. Only block bodies are taken; overloads and
interface members end in ``;`` or have no body and are skipped. Return types may themselves
contain braces (``): { a: number } {``): a ``{`` after ``:``, ``|``, ``&``, ``=>`` and the like
opens a type, not the body.
"""

from __future__ import annotations

import re

from .lexing import (Function, LexError, Token, comment_at, cut, header_before, match_brackets, punct,
                     quoted_end)

# Longest first; ``<`` and ``>`` are never merged (``Array<Array<T>>``), except in ``=>``.
PUNCT = ("===", "!==", "...", "**=", "&&=", "||=", "??=", "=>", "==", "!=", "<=", ">=", "&&", "||", "??", "?.",
         "**", "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=")
# After these a ``/`` starts a regular expression rather than a division.
REGEX_AFTER_IDS = {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case",
                   "do", "else", "yield", "await"}
MODIFIERS = {"export", "default", "declare", "public", "private", "protected", "static", "readonly", "async",
             "override", "abstract", "accessor"}
NOT_NAMES = {"if", "for", "while", "switch", "catch", "with", "return", "function", "class", "interface",
             "type", "enum", "namespace", "module", "import", "new", "typeof", "await", "yield", "super"}
# A ``{`` right after one of these, inside a return type, opens an object type.
TYPE_LEAD = {":", "|", "&", "<", ",", "(", "=>", "[", "?", "=", "keyof", "typeof", "readonly", "extends",
             "infer", "is", "new", "unique", "asserts"}


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$"


class _Lexer:
    """A scanner over one file; template expressions re-enter `scan` on the same text."""

    def __init__(self, src: str) -> None:
        self.src = src

    def _template_end(self, i: int) -> int:
        """``i`` after the opening backtick: the offset after the closing one."""
        src, n = self.src, len(self.src)
        while i < n:
            c = src[i]
            if c == "\\":
                i += 2
            elif c == "`":
                return i + 1
            elif src.startswith("${", i):
                i = self.scan(i + 2, [], until_close=True)
            else:
                i += 1
        raise LexError("unterminated template literal")

    def _regex_end(self, i: int) -> int | None:
        """``i`` at the opening ``/``: the end of a regular expression literal, or None."""
        src, n = self.src, len(self.src)
        j, in_class = i + 1, False
        while j < n:
            c = src[j]
            if c == "\\":
                j += 2
                continue
            if c == "\n":
                return None
            if c == "[":
                in_class = True
            elif c == "]":
                in_class = False
            elif c == "/" and not in_class:
                j += 1
                while j < n and _is_ident_char(src[j]):
                    j += 1
                return j
            j += 1
        return None

    @staticmethod
    def _regex_may_follow(prev: Token | None) -> bool:
        if prev is None:
            return True
        if prev.kind == "id":
            return prev.text in REGEX_AFTER_IDS
        if prev.kind == "str":
            return False
        return prev.text not in (")", "]", "}", "++", "--")

    def _token(self, i: int, prev: Token | None) -> Token:
        """The token that starts at offset ``i`` (not whitespace)."""
        src, n = self.src, len(self.src)
        c = src[i]
        comment = comment_at(src, i, nested=False, line_docs=False)
        if comment is not None:
            return comment
        if c in "'\"":
            j = quoted_end(src, i + 1, c, multiline=False)
        elif c == "`":
            j = self._template_end(i + 1)
        elif c == "/" and self._regex_may_follow(prev) and (j := self._regex_end(i)) is not None:
            pass
        elif _is_ident_char(c) or (c == "#" and i + 1 < n and _is_ident_char(src[i + 1])) or \
                (c == "." and i + 1 < n and src[i + 1].isdigit()):
            j = i + 1
            while j < n and (_is_ident_char(src[j]) or (c.isdigit() or c == ".") and src[j] == "."):
                j += 1
            return Token("id", src[i:j], i, j)
        else:
            return punct(src, i, PUNCT)
        return Token("str", src[i:j], i, j)

    def scan(self, i: int, out: list[Token], until_close: bool = False) -> int:
        """Append the tokens from offset ``i`` to ``out``; with ``until_close``, stop after the
        ``}`` that closes a template expression and return the offset after it."""
        depth = 0
        prev: Token | None = None
        while i < len(self.src):
            if self.src[i].isspace():
                i += 1
                continue
            tok = self._token(i, prev)
            if until_close and tok.kind == "punct" and tok.text in "{}":
                if tok.text == "}" and depth == 0:
                    return tok.end
                depth += 1 if tok.text == "{" else -1
            out.append(tok)
            if tok.kind not in ("comment", "doc"):
                prev = tok
            i = tok.end
        if until_close:
            raise LexError("unterminated template expression")
        return i


def tokenize(src: str) -> list[Token]:
    out: list[Token] = []
    _Lexer(src).scan(0, out)
    return out


class _Declaration:
    """Reads one declaration after a JSDoc comment; `body` is the index of its ``{`` or None."""

    def __init__(self, tokens: list[Token], match: list[int]) -> None:
        self.t, self.match = tokens, match

    def text(self, j: int) -> str:
        return self.t[j].text if 0 <= j < len(self.t) else ""

    def is_punct(self, j: int, text: str) -> bool:
        return 0 <= j < len(self.t) and self.t[j].kind == "punct" and self.t[j].text == text

    def skip_angles(self, j: int) -> int:
        """``j`` at ``<``: the index after its closing ``>``."""
        depth = 0
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "punct":
                if tok.text in ("(", "[", "{"):
                    j = self.match[j]
                elif tok.text == "<":
                    depth += 1
                elif tok.text == ">":
                    depth -= 1
                    if depth == 0:
                        return j + 1
                elif tok.text in (";", ")", "]", "}"):
                    return -1
            j += 1
        return -1

    def until(self, j: int, stops: tuple[str, ...]) -> int:
        """The index of the first of ``stops`` at bracket and angle depth 0 from ``j``, or -1."""
        angle = 0
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "punct":
                if tok.text in stops and angle == 0:
                    return j
                if tok.text in ("(", "[", "{"):
                    j = self.match[j]
                elif tok.text == "<":
                    angle += 1
                elif tok.text == ">":
                    angle = max(0, angle - 1)
                elif tok.text in (";", ")", "]", "}"):
                    return -1
            j += 1
        return -1

    def after_name(self, j: int) -> int | None:
        """From after a function's name: generics, parameters, return type, then the body."""
        if self.is_punct(j, "<"):
            j = self.skip_angles(j)
        if not self.is_punct(j, "("):
            return None
        j = self.match[j] + 1
        if self.is_punct(j, "{"):
            return j
        if not self.is_punct(j, ":"):
            return None
        angle, prev = 0, ":"
        j += 1
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "punct":
                if tok.text in ("(", "["):
                    j, prev = self.match[j] + 1, ")"
                    continue
                if tok.text == "{":
                    if angle == 0 and prev not in TYPE_LEAD:
                        return j
                    j, prev = self.match[j] + 1, "}"
                    continue
                if tok.text == "<":
                    angle += 1
                elif tok.text == ">":
                    angle = max(0, angle - 1)
                elif tok.text in (";", ")", "]", "}"):
                    return None
            prev = tok.text
            j += 1
        return None

    def initializer(self, j: int, depth: int = 0) -> int | None:
        """From after ``=``: an arrow function or function expression with a block body; a curried
        arrow (``(a) => (b) => {``) gives the innermost body."""
        if depth > 8:
            return None
        if self.text(j) == "async" and not self.is_punct(j + 1, "=>"):
            j += 1
        if self.text(j) == "function":
            j += 1
            if self.is_punct(j, "*"):
                j += 1
            if j < len(self.t) and self.t[j].kind == "id":
                j += 1
            return self.after_name(j)
        if self.is_punct(j, "<"):
            j = self.skip_angles(j)
        if self.is_punct(j, "("):
            j = self.match[j] + 1
        elif 0 <= j < len(self.t) and self.t[j].kind == "id":
            j += 1
        else:
            return None
        if self.is_punct(j, ":"):
            j = self.until(j + 1, ("=>",))
        if j < 0 or not self.is_punct(j, "=>"):
            return None
        return j + 1 if self.is_punct(j + 1, "{") else self.initializer(j + 1, depth + 1)

    def read(self, j: int) -> tuple[str, int] | None:
        """``j`` at the first token after the JSDoc: (name, body index) or None."""
        t = self.t
        while self.is_punct(j, "@"):  # decorators: @Input() @a.b(c)
            j += 1
            while j < len(t) and (t[j].kind == "id" or self.is_punct(j, ".")):
                j += 1
            if self.is_punct(j, "("):
                j = self.match[j] + 1
        while j + 1 < len(t) and t[j].kind == "id" and t[j].text in MODIFIERS and \
                t[j + 1].text not in ("(", "<", "=", ":", "?", ";", "!", ","):
            j += 1
        word = self.text(j)
        if word == "function" and t[j].kind == "id":
            j += 1
            if self.is_punct(j, "*"):
                j += 1
            name = "default"
            if j < len(t) and t[j].kind == "id":
                name, j = t[j].text, j + 1
            body = self.after_name(j)
            return (name, body) if body is not None else None
        if word in ("const", "let", "var") and t[j].kind == "id":
            j += 1
            if j >= len(t) or t[j].kind != "id":
                return None
            name = t[j].text
            j += 1
            if self.is_punct(j, ":"):
                j = self.until(j + 1, ("=",))
            if j < 0 or not self.is_punct(j, "="):
                return None
            body = self.initializer(j + 1)
            return (name, body) if body is not None else None
        # a method or a property of a class or object literal
        if word in ("get", "set") and j + 1 < len(t) and (t[j + 1].kind in ("id", "str") or self.is_punct(j + 1, "[")):
            j += 1
        if self.is_punct(j, "*"):
            j += 1
        if j >= len(t):
            return None
        if self.is_punct(j, "["):
            name, j = "[computed]", self.match[j] + 1
        elif t[j].kind in ("id", "str") and t[j].text not in NOT_NAMES:
            name, j = t[j].text.strip("'\""), j + 1
        else:
            return None
        if self.is_punct(j, "?") or self.is_punct(j, "!"):
            j += 1
        if self.is_punct(j, "(") or self.is_punct(j, "<"):
            body = self.after_name(j)
        else:
            if self.is_punct(j, ":"):
                j = self.until(j + 1, ("=",))
            body = self.initializer(j + 1) if j >= 0 and self.is_punct(j, "=") else None
        return (name, body) if body is not None else None


def _has_words(doc: str) -> bool:
    """Whether a JSDoc says something besides tags (``/** @internal */`` does not)."""
    return bool(re.search(r"[A-Za-z]{2}", re.sub(r"@\w+", "", doc[3:-2])))


def _owner(tokens: list[Token], parent: list[int], index: int) -> str | None:
    brace = parent[index]
    if brace < 0:
        return None
    head = header_before(tokens, brace)
    for k, tok in enumerate(head[:-1]):
        if tok.kind == "id" and tok.text == "class" and head[k + 1].kind == "id":
            return f"class {head[k + 1].text}"
    return None


def extract(src: str) -> list[Function]:
    """Every function, method or arrow function with a JSDoc comment and a block body in ``src``;
    `LexError` if the file cannot be scanned."""
    tokens = tokenize(src)
    match, parent = match_brackets(tokens)
    reader = _Declaration(tokens, match)
    found = []
    for d, tok in enumerate(tokens):
        if tok.kind != "doc" or not _has_words(tok.text):
            continue
        k = d + 1
        while k < len(tokens) and tokens[k].kind == "comment":
            k += 1
        if k >= len(tokens) or tokens[k].kind == "doc":
            continue
        got = reader.read(k)
        if got is None:
            continue
        name, body = got
        fn = cut(src, tok.start, tokens[body].start, tokens[match[body]].start, name, _owner(tokens, parent, k))
        if fn is not None:
            found.append(fn)
    return found
