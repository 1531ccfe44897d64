"""Corefile tables: valid inputs and what they mean, invalid ones and the
file:line message they give."""
import pytest

from nodecache.cli import main
from nodecache.config.corefile import CorefileError, tokenize
from nodecache.upstream.options import Upstream
from nodecache.config.parse import parse_config

NODE_CACHE_SHAPE = """\
cluster.local:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    bind 169.254.20.10 fd00::10
    forward . 10.0.0.10 {
            force_tcp
    }
}
in-addr.arpa:53 ip6.arpa:53 {
    errors
    cache 30
    bind 169.254.20.10 fd00::10
    forward . 10.0.0.10 {
            force_tcp
    }
}
.:53 {
    errors
    cache 30
    bind 169.254.20.10 fd00::10
    forward . {$UPSTREAM} # resolver of the node
}
"""


def test_node_cache_shape():
    cfg = parse_config(NODE_CACHE_SHAPE, env={"UPSTREAM": "[fd00::53]:5353"})
    zones = [b.zones for b in cfg.blocks]
    assert zones == [("cluster.local.",), ("in-addr.arpa.", "ip6.arpa."), (".",)]
    cl = cfg.blocks[0]
    assert cl.option("cache").success.capacity == 9984 and cl.option("cache").success.max_ttl == 30
    assert cl.option("cache").denial.max_ttl == 5 and cl.option("cache").denial.min_ttl == 5
    assert cl.option("forward")[0].force_tcp and cl.option("forward")[0].to == (Upstream("10.0.0.10", 53),)
    assert cl.binds == ("169.254.20.10", "fd00::10") and cl.has("errors")
    assert cfg.blocks[1].option("cache").success.max_ttl == 30 and cfg.blocks[1].option("cache").denial.max_ttl == 30
    assert cfg.blocks[2].option("forward")[0].to == (Upstream("fd00::53", 5353),)
    assert cfg.listeners == (("169.254.20.10", 53), ("fd00::10", 53))


def test_defaults_are_coredns_defaults():
    b = parse_config(". {\n cache\n forward . 127.0.0.1\n}").blocks[0]
    assert (b.option("cache").success.capacity, b.option("cache").success.max_ttl, b.option("cache").success.min_ttl) == (9984, 3600, 5)
    assert (b.option("cache").denial.max_ttl, b.option("cache").servfail_ttl) == (1800, 5)
    f = b.option("forward")[0]
    assert (f.expire, f.max_fails, f.health_check, f.policy, f.force_tcp) == (10, 2, 0.5, "random", False)
    assert b.port == 53 and b.binds == ()


def test_cache_options_full():
    b = parse_config("""example.org:1053 {
  cache 300 sub.example.org {
    success 100 60 2
    denial 50
    servfail 2s
    prefetch 5 2m 20%
    serve_stale 1h30m verify
  }
}""").blocks[0]
    c = b.option("cache")
    assert c.zones == ("sub.example.org.",) and b.port == 1053
    assert (c.success.capacity, c.success.max_ttl, c.success.min_ttl) == (100, 60, 2)
    assert (c.denial.capacity, c.denial.max_ttl) == (50, 300)
    assert c.servfail_ttl == 2 and (c.prefetch.amount, c.prefetch.duration, c.prefetch.percentage) == (5, 120, 20)
    assert c.serve_stale.duration == 5400 and c.serve_stale.verify


def test_forward_options(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search x\nnameserver 127.0.0.53\nnameserver ::1\noptions ndots:5\n")
    f = parse_config(f""". {{
  forward . {resolv} 127.0.0.2:5300 dns://[::1]:53 {{
    prefer_udp
    expire 30s
    max_fails 3
    health_check 1s
    policy sequential
    max_concurrent 1000
    except cluster.local in-addr.arpa
  }}
}}""").blocks[0].option("forward")[0]
    assert f.to == (Upstream("127.0.0.53"), Upstream("::1"), Upstream("127.0.0.2", 5300))
    assert f.prefer_udp and f.expire == 30 and f.max_fails == 3 and f.health_check == 1
    assert f.policy == "sequential" and f.max_concurrent == 1000
    assert f.except_zones == ("cluster.local.", "in-addr.arpa.")


def test_tokenizer_quotes_comments_and_lines():
    toks = tokenize('a "b c" # comment\n"d\\"e" f,g')
    assert [(t.text, t.line) for t in toks] == [("a", 1), ("b c", 1), ('d"e', 2), ("f", 2), ("g", 2)]


def test_several_keys_and_ports():
    cfg = parse_config("a.example:53 b.example:5353, dns://c.example {\n forward . 127.0.0.1\n}")
    assert [(b.zones, b.port) for b in cfg.blocks] == [(("a.example.", "c.example."), 53), (("b.example.",), 5353)]


@pytest.mark.parametrize("text,line,message", [
    (". {\n  cache\n  bogus 1\n}", 3, "unknown directive 'bogus'"),
    (". {\n  health :99999\n}", 2, "outside 0..65535"),
    (". {\n  reload 1s\n}", 2, "INTERVAL must be >= 2s"),
    (". {\n  loop x\n}", 2, "takes no arguments"),
    (". {\n  prometheus foo:9253\n}", 2, "not an IP address"),
    (". {\n  cache {\n    success x\n  }\n}", 3, "is not a number"),
    (". {\n  cache {\n    sucess 10\n  }\n}", 3, "unknown option 'sucess'"),
    (". {\n  forward .\n}", 2, "at least one upstream"),
    (". {\n  forward . 10.0.0.300\n}", 2, "not an IP"),
    (". {\n  forward . 1.1.1.1 {\n    policy fastest\n  }\n}", 3, "unknown policy"),
    (". {\n  forward . 1.1.1.1 {\n    force_tcp\n    prefer_udp\n  }\n}", 2, "mutually exclusive"),
    (". {\n  forward . 1.1.1.1 {\n    tls a b c d\n  }\n}", 3, "wrong arguments for 'tls'"),
    (". {\n  forward . tls://1.1.1.1 {\n    tls /nonexistent/ca.pem\n  }\n}", 2, "forward: tls:"),
    (". {\n  forward . 1.1.1.1 {\n    failover NOERROR\n  }\n}", 3, "NOERROR cannot be used in failover"),
    (". {\n  forward . 1.1.1.1 {\n    next BOGUS\n  }\n}", 3, "BOGUS is not a valid rcode"),
    (". {\n  forward . tls://1.1.1.1%a.example {\n    tls_servername b.example\n  }\n}", 2, "both set"),
    (". {\n  forward . quic://1.1.1.1\n}", 2, "unknown scheme"),
    (". {\n  forward . tls://dns.example\n}", 2, "tls_servername"),
    (". {\n  cache {\n    servfail 10m\n  }\n}", 3, "may not exceed 5m"),
    (". {\n  cache {\n    prefetch 1 1m 95%\n  }\n}", 3, "outside 10..90"),
    (". {\n  cache {\n    serve_stale 1h sometimes\n  }\n}", 3, "not immediate or verify"),
    (". {\n  bind eth0x\n}", 2, "not an IP address"),
    (". {\n  cache\n  cache\n}", 3, "only once"),
    (".:99999 {\n}", 1, "outside 1..65535"),
    (". {\n  cache\n", 1, "never closed"),
    # an inner block left open: its '{' is named, not the server block's
    (".:53 {\n    cache {\n        success 100\n    forward . 1.1.1.1\n}\n", 2, "lines up with an outer block"),
    (". {\n  cache { success 100 }\n  forward . 1.1.1.1 {\n", 3, "never closed"),
    (". {\n  cache\n}\n}", 4, "unexpected '}'"),
    ("\n\n. {\n}\n. {\n}", 5, "already served by the block at Corefile:3"),
    ("tls://. {\n}", 1, "not supported"),
    ('. {\n  log "unterminated\n}', 2, "unterminated quoted string"),
    ("", 1, "no server blocks"),
    ("(snip) {\n}", 1, "snippets and import are not supported"),
    (". {\n  cache 10 {\n    success 10 5 9\n  }\n}", 3, "MINTTL 9 exceeds TTL 5"),
    (". {\n  forward . 1.1.1.1 {\n    expire ten\n  }\n}", 3, "invalid duration"),
])
def test_invalid_corefiles(text, line, message):
    with pytest.raises(CorefileError) as err:
        parse_config(text, "Corefile")
    assert err.value.line == line, str(err.value)
    assert message in str(err.value)
    assert str(err.value).startswith(f"Corefile:{line}: ")


def test_check_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "Corefile"
    good.write_text(NODE_CACHE_SHAPE.replace("{$UPSTREAM}", "127.0.0.1"))
    assert main(["check", "-conf", str(good)]) == 0
    out = capsys.readouterr().out
    assert "cluster.local. port 53" in out and "chain: errors -> cache -> forward" in out
    bad = tmp_path / "Bad"
    bad.write_text(". {\n  cache\n  frobnicate\n}\n")
    assert main(["check", "-conf", str(bad)]) == 2
    assert f"{bad}:3: unknown directive 'frobnicate'" in capsys.readouterr().err
    assert main(["check", "-conf", str(tmp_path / "missing")]) == 2


def test_a_corefile_that_is_not_utf8_is_a_corefile_error(tmp_path):
    from nodecache.config.parse import load
    path = tmp_path / "Corefile"
    path.write_bytes(b".:53 {\n  forward . 1.2.3.4 # caf\xe9\n}\n")
    with pytest.raises(CorefileError, match="not UTF-8"):
        load(path)


def test_a_nul_in_a_forward_file_name_is_a_corefile_error():
    # found by the corefile fuzz target: ValueError from open() escaped
    with pytest.raises(CorefileError, match="not a file name"):
        parse_config(".:53 {\n  forward . /etc/res\x00olv.conf\n}\n")
