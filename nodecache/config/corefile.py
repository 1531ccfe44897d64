"""Corefile syntax (CoreDNS's Caddyfile dialect) -> a small syntax tree.

Theory of operation: text is split into tokens (whitespace separated,
``"quoted strings"`` with backslash escapes, ``#`` comments to end of line,
``{$ENV}`` replaced by the environment variable's value before tokenising, as
CoreDNS does). Each token remembers its line, so every later error can say
``file:line: message``. Tokens then group into server blocks (keys, then a
braced body) holding directives (a name, its arguments up to the end of the
line, and optionally a braced body of sub-directives). This module knows
nothing of what directives mean; ``config.parse`` does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field


class CorefileError(Exception):
    def __init__(self, source: str, line: int, message: str):
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")
        self.source, self.line, self.message = source, line, message


@dataclass(frozen=True)
class Token:
    text: str
    line: int
    quoted: bool = False
    col: int = 0  # column of its first character (for error messages only)


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[Token, ...]
    body: tuple["Directive", ...] | None
    line: int


@dataclass(frozen=True)
class ServerBlockSyntax:
    keys: tuple[Token, ...]
    directives: tuple[Directive, ...]
    line: int


@dataclass
class _Cursor:
    tokens: list[Token]
    source: str
    pos: int = 0
    last_line: int = field(default=1)
    # '}' that closed a block but lines up with an outer one: if the file then
    # ends inside a block, the '{' of the first of these is the likely culprit
    misplaced: list[tuple[Token, Token]] = field(default_factory=list)
    indent: dict[int, int] = field(default_factory=dict)  # line -> column of its first token

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def error(self, line: int, message: str) -> CorefileError:
        return CorefileError(self.source, line, message)


_ENV = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return _ENV.sub(lambda m: env.get(m.group(1), ""), text)


def tokenize(text: str, source: str = "Corefile") -> list[Token]:
    tokens: list[Token] = []
    i, line, n, line_start = 0, 1, len(text), 0
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            line_start = i
        elif ch in " \t\r,":  # commas separate server block keys like spaces
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start_line, buf = line, []
            i += 1
            while True:
                if i >= n:
                    raise CorefileError(source, start_line, "unterminated quoted string")
                ch = text[i]
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                if ch == "\n":
                    line += 1
                    line_start = i + 1
                buf.append(ch)
                i += 1
            tokens.append(Token("".join(buf), start_line, True))
        else:
            start = i
            while i < n and text[i] not in ' \t\r\n,"':
                i += 1
            tokens.append(Token(text[start:i], line, False, start - line_start))
    return tokens


def parse(text: str, source: str = "Corefile", env: dict[str, str] | None = None
          ) -> tuple[ServerBlockSyntax, ...]:
    cur = _Cursor(tokenize(expand_env(text, env), source), source)
    for tok in reversed(cur.tokens):
        cur.indent[tok.line] = tok.col
    blocks = []
    while cur.peek() is not None:
        blocks.append(_server_block(cur))
    if not blocks:
        raise CorefileError(source, 1, "no server blocks")
    return tuple(blocks)


def _is_open(tok: Token | None) -> bool:
    return tok is not None and tok.text == "{" and not tok.quoted


def _is_close(tok: Token | None) -> bool:
    return tok is not None and tok.text == "}" and not tok.quoted


def _server_block(cur: _Cursor) -> ServerBlockSyntax:
    first = cur.peek()
    if first.text.startswith("(") or first.text == "import":
        raise cur.error(first.line, f"'{first.text}': snippets and import are not supported")
    keys = []
    while cur.peek() is not None and not _is_open(cur.peek()):
        tok = cur.take()
        if _is_close(tok):
            raise cur.error(tok.line, "unexpected '}'")
        if keys and tok.line != keys[-1].line:
            raise cur.error(tok.line, f"expected '{{' after server block keys, found {tok.text!r}")
        keys.append(tok)
    if cur.peek() is None:
        raise cur.error(first.line, "server block keys without a '{ ... }' body")
    open_tok = cur.take()
    if open_tok.line != keys[-1].line if keys else True:
        raise cur.error(open_tok.line, "'{' must be on the same line as the server block keys")
    return ServerBlockSyntax(tuple(keys), _body(cur, open_tok), first.line)


MAX_DEPTH = 8  # blocks inside blocks; real Corefiles use 2 or 3


def _body(cur: _Cursor, open_tok: Token, depth: int = 1) -> tuple[Directive, ...]:
    if depth > MAX_DEPTH:
        raise cur.error(open_tok.line, f"blocks nested more than {MAX_DEPTH} deep")
    directives = []
    while True:
        tok = cur.peek()
        if tok is None:
            if cur.misplaced:
                opened, closed = cur.misplaced[0]
                raise cur.error(opened.line, f"'{{' is never closed (the '}}' on line {closed.line} lines up "
                                             f"with an outer block)")
            raise cur.error(open_tok.line, "'{' is never closed")
        if _is_close(tok):
            cur.take()
            if (depth > 1 and tok.line != open_tok.line and cur.indent.get(tok.line) == tok.col
                    and tok.col != cur.indent.get(open_tok.line, tok.col)):
                cur.misplaced.append((open_tok, tok))
            return tuple(directives)
        if _is_open(tok):
            raise cur.error(tok.line, "unexpected '{'")
        directives.append(_directive(cur, depth))


def _directive(cur: _Cursor, depth: int = 1) -> Directive:
    name = cur.take()
    args = []
    body = None
    while True:
        tok = cur.peek()
        if tok is None or tok.line != name.line and not (args and tok.line == args[-1].line):
            break
        if _is_close(tok):
            break
        if _is_open(tok):
            cur.take()
            body = _body(cur, tok, depth + 1)
            break
        args.append(cur.take())
    return Directive(name.text, tuple(args), body, name.line)
