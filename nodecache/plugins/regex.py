"""Regexes from a Corefile, with CoreDNS's meaning and in linear time.

CoreDNS compiles ``template match`` and ``rewrite ... regex`` patterns with
Go's ``regexp``: RE2 syntax, matched in time linear in the name. Python's
``re`` backtracks: the common hostname idiom ``^(?P<host>([a-z0-9]+-?)+)\\.``
takes seconds (doubling with every character) on a name a client chooses,
and every query waits while one is matched on the event loop. So these
patterns are compiled here by RE2 itself (the ``google-re2`` binding to
Google's library, the engine Go's package reimplements): a pattern means
what it means in the Corefile node-cache reads, and no name can hold the
loop. What RE2 refuses (backreferences, lookaround, possessive
quantifiers) is a start-up error naming the pattern, as in CoreDNS.
"""
from __future__ import annotations

from functools import cache


@cache
def _re2():
    """The binding and our options, imported at the first pattern: 2.6 MiB of
    memory a Corefile without regexes does not pay."""
    import re2
    options = re2.Options()
    options.log_errors = False  # the error is ours to report (a Corefile error), not RE2's stderr line
    return re2, options


class RegexError(ValueError):
    """A pattern RE2 (and so CoreDNS) does not accept."""


def compile_regex(pattern: str):
    """``pattern`` compiled by RE2: ``search``, ``match``, ``pattern``,
    match objects with ``group``, ``groups`` and ``groupdict`` as ``re``'s."""
    re2, options = _re2()
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(f"{reason} (RE2 syntax, as CoreDNS's: no backreferences or lookaround)") from None
