"""The command line an operator expects: node-cache's spellings both ways,
defaults in --help, bad values refused in one line, Corefile errors that
name the file and flag, `check` rendering templates, RFC 3339 JSON logs."""
import json
import logging
import subprocess
import sys

import pytest

from nodecache.cli import JsonFormatter, main, parser
from nodecache.run.configsource import ConfigSource
from nodecache.run.params import RunParams

CLI = [sys.executable, "-m", "nodecache"]


def _subparser(name):
    sub = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize("command", ["run", "check", "probe", "demo", "fake-upstream"])
def test_every_long_flag_has_both_spellings(command):
    for action in _subparser(command)._actions:
        if action.dest == "help":
            continue
        longs = [o for o in action.option_strings if len(o.lstrip("-")) > 1]
        for option in longs:
            bare = option.lstrip("-")
            assert f"-{bare}" in action.option_strings and f"--{bare}" in action.option_strings, option


def test_help_shows_defaults_and_every_flag_has_help():
    run = _subparser("run")
    for action in run._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help"
    text = run.format_help()
    for default in ("(default 4096)", "(default 5000.0)", "(default nodelocaldns)", "(default /run/nodecache)"):
        assert default in " ".join(text.split()), default


def test_go_style_values_and_spellings_parse_the_same():
    p = parser()
    a = p.parse_args(["run", "--localip", "169.254.20.10", "-skipteardown", "-syncinterval=1m", "--dns.port=5353"])
    b = p.parse_args(["run", "-localip=169.254.20.10", "--skipteardown=true", "-syncinterval", "60", "-dns.port", "5353"])
    assert (a.localip, a.skipteardown, a.syncinterval, a.dns_port) == (b.localip, b.skipteardown, b.syncinterval,
                                                                      b.dns_port) == ("169.254.20.10", True, 60.0, 5353)


@pytest.mark.parametrize("argv, needle", [
    (["-max-inflight", "0"], "must be at least 1"),
    (["-max-inflight-per-client", "-3"], "must be at least 1"),
    (["-dns.port", "70000"], "outside 1..65535"),
    (["-health-port", "0"], "outside 1..65535"),
    (["-cache-bytes", "0"], "byte count above 0"),
    (["-syncinterval", "0"], "must be above 0"),
    (["-drain=-1s"], "invalid duration"),
    (["-skipteardown=maybe"], "invalid boolean"),
    (["-localp", "1.2.3.4"], "unrecognized arguments"),   # no abbreviations, no guessing
    (["-local", "1.2.3.4"], "unrecognized arguments"),
    (["-udp-coalesce=500us"], "0 (off) or 1ms..10ms"),   # below the loop's timer tick
    (["-udp-coalesce=20ms"], "0 (off) or 1ms..10ms"),
    # a listen address is checked at start: it used to raise a traceback after DNS was already served
    (["-prometheus-listen-address", "garbage"], "want HOST:PORT"),
    (["-prometheus-listen-address", "127.0.0.1:"], "invalid port"),
    (["-prometheus-listen-address", ":99999"], "outside 1..65535"),
    (["-prometheus-listen-address", "::1:9253"], "in brackets"),
    (["-metrics-listen-address", "node:9353"], "not an IP address"),
])
def test_a_bad_value_is_one_line_without_the_usage(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err, err
    assert err.count("\n") == 1 and "usage:" not in err, err


def test_a_missing_corefile_names_the_file_and_the_flags(tmp_path, capsys):
    code = main(["check", "-conf", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'nope'}: cannot read: No such file" in err and "-conf" in err, err


TEMPLATE = """cluster.local:53 {
    cache 30
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__CLUSTER__DNS__ {
        force_tcp
    }
}
.:53 {
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__UPSTREAM__SERVERS__
}
"""


def test_check_renders_a_node_cache_template_with_the_flags(tmp_path, capsys):
    base = tmp_path / "Corefile.base"
    base.write_text(TEMPLATE)
    code = main(["check", "-basecorefile", str(base), "-conf", str(tmp_path / "Corefile"),
                 "-localip", "169.254.20.10,10.96.0.10", "--clusterdns", "10.96.0.11"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bind 169.254.20.10 10.96.0.10" in out and "forward . 10.96.0.11 {" in out
    assert "cluster.local. port 53 on 169.254.20.10, 10.96.0.10" in out
    assert not (tmp_path / "Corefile").exists()  # check never writes


def test_check_says_which_flag_a_template_needs(tmp_path, capsys):
    base = tmp_path / "Corefile.base"
    base.write_text(TEMPLATE)
    assert main(["check", "-conf", str(base), "--clusterdns", "10.96.0.11"]) == 2
    assert "__PILLAR__LOCAL__DNS__ needs -localip" in capsys.readouterr().err


def test_run_writes_the_effective_corefile_where_node_cache_does(tmp_path, caplog):
    base = tmp_path / "Corefile.base"
    base.write_text(TEMPLATE)
    params = RunParams(conf=str(tmp_path / "Corefile"), base_corefile=str(base), local_ips=("169.254.20.10",))
    env = {"KUBE_DNS_SERVICE_HOST": "10.96.0.11"}
    ConfigSource(params, env).load()
    written = (tmp_path / "Corefile").read_text()
    assert "bind 169.254.20.10" in written and "__PILLAR__" not in written
    # an unwritable -conf is a warning (once), never a failure
    ro = RunParams(conf=str(tmp_path / "missing-dir" / "Corefile"), base_corefile=str(base),
                   local_ips=("169.254.20.10",))
    src = ConfigSource(ro, env)
    with caplog.at_level(logging.WARNING, logger="nodecache"):
        src.load()
        src.load()
    assert sum("cannot write the effective Corefile" in r.getMessage() for r in caplog.records) == 1


def test_json_logs_have_rfc3339_times_with_milliseconds_and_zone():
    record = logging.LogRecord("nodecache", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.created = 1764645600.123456
    out = json.loads(JsonFormatter().format(record))
    assert out["time"] == "2025-12-02T03:20:00.123+00:00" and out["msg"] == "hello x"


def test_fake_upstream_on_a_busy_port_is_one_line(tmp_path):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run(CLI + ["fake-upstream", "--listen", f"127.0.0.1:{port}"], capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 1 and "Address already in use" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["--qps", "0"], "--qps must be above 0"),
    (["--duration", "0"], "--duration must be above 0"),
    (["--concurrency", "0"], "--concurrency must be above 0"),
    (["--port", "70000"], "--port must be 1..65535"),
    (["--scenario", "file", "--queries", "/nonexistent/q.txt"], "--queries /nonexistent/q.txt: No such file"),
])
def test_nodecache_bench_refuses_values_it_cannot_run(argv, needle, capsys):
    from nodecache_bench.cli import main as bench_main
    assert bench_main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_nodecache_bench_says_when_answers_were_refused():
    from nodecache_bench.runload import report
    from nodecache_bench.loadgen import Result, Spec
    result = Result(sent=100, answered=100, rcodes={0: 60, 5: 40}, elapsed=1.0)
    rep = report(Spec("127.0.0.1", 53), result, 1)
    assert rep["rcodes"] == {"NOERROR": 60, "REFUSED": 40}
    assert any(w.startswith("40 answers were REFUSED") and "-miss-rate-per-client" in w for w in rep["warnings"])
    assert not report(Spec("127.0.0.1", 53), Result(sent=5, answered=5, rcodes={0: 5}, elapsed=1.0), 1)["warnings"]


NODE_CACHE_FLAGS = [  # node-cache's parseAndValidateFlags (metrics TLS included) and CoreDNS's own
    "-localip=169.254.20.10,fd00::10", "-setupinterface=false", "-interfacename=nodelocaldns",
    "-syncinterval=1m", "-metrics-listen-address=0.0.0.0:9353", "-setupiptables=false", "-setupebtables=false",
    "-basecorefile=/etc/coredns/Corefile.base", "-corefile=/etc/Corefile", "-kubednscm=/etc/kube-dns",
    "-upstreamsvc=kube-dns", "-health-port=8080", "-skipteardown", "-reloadwithsignal", "-pidfile=/run/nc.pid",
    "-dns.port=53", "-conf=/etc/Corefile", "-quiet", "-prometheus-listen-address=:9253", "-tls-enabled=false",
    "-tls-cert-file=/etc/ssl/tls.crt", "-tls-private-key-file=/etc/ssl/tls.key",
    "-tls-client-auth-type=RequireAndVerifyClientCert", "-tls-client-ca-file=/etc/ssl/ca.crt",
    "-tls-min-version=VersionTLS12"]


def test_every_node_cache_flag_parses():
    args = parser().parse_args(["run", *NODE_CACHE_FLAGS])
    assert args.reloadwithsignal and args.quiet and args.prometheus_listen == ":9253"
    assert args.tls_client_auth == "RequireAndVerifyClientCert" and args.tls_min_version == "VersionTLS12"


def test_plugins_lists_every_directive_and_exits(capsys):
    assert main(["run", "-plugins"]) == 0
    out = capsys.readouterr().out
    assert "dns.hosts" in out and "dns.template" in out and "dns.rewrite" in out


def test_udp_coalesce_parses_go_durations_and_needs_batching(tmp_path, capsys):
    p = parser()
    assert p.parse_args(["run", "-udp-coalesce=2ms"]).udp_coalesce == 0.002
    assert p.parse_args(["run", "-udp-coalesce", "0"]).udp_coalesce == 0.0
    assert p.parse_args(["run"]).udp_coalesce == 0.0  # off by default
    code = main(["run", "-udp-coalesce=2ms", "-udp-batch=false", "-conf", str(tmp_path / "Corefile")])
    err = capsys.readouterr().err
    assert code == 2 and "-udp-coalesce needs -udp-batch" in err, err


def test_check_checks_the_conf_it_is_given_beside_an_existing_template(tmp_path, capsys):
    """With -basecorefile present, run serves the template; a broken -conf
    named to check used to pass in silence."""
    base = tmp_path / "Corefile.base"
    base.write_text(".:53 {\n    forward . 10.0.0.1\n}\n")
    broken = tmp_path / "Corefile"
    broken.write_text(".:53 {\n    bogusplugin\n}\n")
    assert main(["check", "-conf", str(broken), "-basecorefile", str(base)]) == 2
    assert "unknown directive 'bogusplugin'" in capsys.readouterr().err


def test_a_leftover_pillar_token_is_an_error_naming_its_line(tmp_path, capsys):
    conf = tmp_path / "Corefile"
    conf.write_text(".:53 {\n    forward . 10.0.0.1\n}\n__PILLAR__DNS__DOMAIN__:53 {\n    forward . 10.0.0.1\n}\n")
    assert main(["check", "-conf", str(conf)]) == 2
    assert f"{conf}:4: __PILLAR__DNS__DOMAIN__ was left" in capsys.readouterr().err


def test_check_into_a_closed_pipe_exits_without_a_traceback(tmp_path):
    conf = tmp_path / "Corefile"
    conf.write_text("".join(f"zone{i}.example:53 {{\n    forward . 10.0.0.1\n}}\n" for i in range(400)))
    proc = subprocess.Popen([sys.executable, "-m", "nodecache", "check", "-conf", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0 and "Traceback" not in err, err


def test_an_unusable_handoff_directory_is_one_line_and_exit_2(tmp_path):
    conf = tmp_path / "Corefile"
    conf.write_text(".:53 {\n    bind 127.0.0.1\n    forward . 127.0.0.1:9\n}\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = subprocess.run([sys.executable, "-m", "nodecache", "run", "-conf", str(conf), "-handoff-dir",
                          str(not_a_dir), "-metrics-listen-address", "", "-status-socket", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    assert "-handoff-dir" in out.stdout + out.stderr and "Not a directory" in out.stdout + out.stderr


def test_nodecache_bench_says_a_lossy_open_loop_run_is_likely_saturation():
    from nodecache_bench.runload import report
    from nodecache_bench.loadgen import Result, Spec
    rep = report(Spec("127.0.0.1", 53, qps=50000), Result(sent=1000, answered=790, lost=210, rcodes={0: 790}, elapsed=1.0), 1)
    assert any("most likely saturated" in w for w in rep["warnings"]), rep["warnings"]


def test_plot_without_matplotlib_fails_before_the_run(capsys):
    pytest.importorskip("nodecache_bench")
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed: nothing to refuse")
    except ImportError:
        pass
    import time
    from nodecache_bench.cli import main as bench_main
    t0 = time.monotonic()
    assert bench_main(["run", "-p", "9", "--duration", "30", "--plot", "x.png"]) == 2
    assert time.monotonic() - t0 < 5 and "--plot needs matplotlib" in capsys.readouterr().err



@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("localip, needle", [
    ("169.254.20.10,$(KUBE_DNS_SERVICE_HOST)", "was not expanded"),  # the Service is not kube-dns
    ("169.254.20.300", "is not an IP address"),
    ("nodelocal", "is not an IP address"),
])
def test_a_localip_that_is_not_an_address_stops_the_start(tmp_path, capsys, command, localip, needle):
    """Logged and ignored before: /ready 200 and pods passing us by in silence."""
    conf = tmp_path / "Corefile"
    conf.write_text(".:53 {\n    forward . 10.0.0.1\n}\n")
    assert main([command, "-conf", str(conf), "-localip", localip]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
