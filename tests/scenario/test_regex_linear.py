"""Corefile regexes run on RE2, as CoreDNS's Go regexps do: a name a client
chooses matches in linear time (Python's backtracking ``re`` took 9 s for
one query with the common hostname idiom below, every query waiting), and
what RE2 refuses is a start-up error naming the line."""
from __future__ import annotations

import re
import time

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.config.corefile import CorefileError
from nodecache.config.parse import parse_config
from nodecache.plugins.regex import compile_regex
from nodecache.emulated.client import build
from nodecache_lab.harness import node

IDIOM = r"^(?P<host>([a-z0-9]+-?)+)[.]example[.]$"
HOSTILE = "a" * 27 + "!.example."

TEMPLATE = """example.:{port} {{
    bind 127.0.0.1
    template IN A example {{
        match "IDIOM"
        answer "{{{{ .Name }}}} 60 IN A 192.0.2.1"
        fallthrough
    }}
    forward . 127.0.0.1:{up0}
}}
""".replace("IDIOM", IDIOM)
REWRITE = """.:{port} {{
    bind 127.0.0.1
    rewrite name regex IDIOM {{1}}.example.net.
    forward . 127.0.0.1:{up0}
}}
""".replace("IDIOM", IDIOM)


@pytest.mark.parametrize("corefile", [TEMPLATE, REWRITE], ids=["template", "rewrite"])
async def test_a_hostile_name_is_answered_in_milliseconds(corefile):
    async with node(corefile) as n:
        t0 = time.monotonic()
        await n.udp(build(HOSTILE.rstrip("."), QTYPE.A), timeout=3)
        took = time.monotonic() - t0
        fine = DNSRecord.parse(await n.udp(build("web-1.example", QTYPE.A)))
        assert took < 0.2, f"{took:.2f} s for one query"
        assert fine.rr  # the idiom still matches what it should


def test_negative_control_pythons_re_backtracks_on_the_same_name():
    """The same pattern and name in Python's re, cut short (a shorter name:
    each more character doubles the time): it takes far longer than RE2."""
    name = "a" * 20 + "!.example."
    t0 = time.perf_counter()
    assert re.search(IDIOM, name) is None
    backtracking = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert compile_regex(IDIOM).search(HOSTILE) is None  # 7 characters more, for RE2
    linear = time.perf_counter() - t0
    assert backtracking > 20 * linear, (backtracking, linear)


@pytest.mark.parametrize("directive", [
    'template IN A {\n        match "(a)\\\\1"\n    }',
    'template IN A {\n        match "(?=a)b"\n    }',
    "rewrite name regex (a)\\1 b.example.",
    "rewrite name regex (?!x)a b.example.",
])
def test_what_re2_refuses_is_a_start_up_error_naming_the_line(directive):
    with pytest.raises(CorefileError, match=r"Corefile:[23]: .*RE2 syntax"):
        parse_config(f". {{\n    {directive}\n}}\n", "Corefile")
