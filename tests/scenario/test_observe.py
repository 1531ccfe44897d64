"""Metrics with CoreDNS's names, health/ready, loop detection, probes."""
import asyncio
import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from dnslib import QTYPE, DNSRecord
from prometheus_client.parser import text_string_to_metric_families

from nodecache.run.status import UNREADY_AFTER_DOWN

from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache.config.parse import parse_config
from nodecache.node.reconcile import NodeParams, NodeSetup
from nodecache.run.status import Phase, Runtime
from nodecache_lab.fakes import run
from nodecache_lab.harness import CLUSTER, node

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"  # generated from the collectors

# Every series we export, with its labels: the same table is in the README.
METRICS = {
    "coredns_build_info": {"version", "revision", "goversion"},
    "coredns_panics_total": set(),
    "coredns_dns_requests_total": {"server", "zone", "view", "proto", "family", "type"},
    "coredns_dns_responses_total": {"server", "zone", "view", "rcode", "plugin"},
    "coredns_dns_do_requests_total": {"server", "view", "zone"},
    "coredns_dns_request_duration_seconds": {"server", "zone", "view", "type"},
    "coredns_dns_request_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_dns_response_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_cache_entries": {"server", "type", "zones", "view"},
    "coredns_cache_hits_total": {"server", "type", "zones", "view"},
    "coredns_cache_misses_total": {"server", "zones", "view"},
    "coredns_cache_requests_total": {"server", "zones", "view"},
    "coredns_cache_prefetch_total": {"server", "zones", "view"},
    "coredns_cache_drops_total": {"server", "zones", "view"},
    "coredns_cache_served_stale_total": {"server", "zones", "view"},
    "coredns_cache_evictions_total": {"server", "type", "zones", "view"},
    "coredns_forward_max_concurrent_rejects_total": set(),
    "coredns_forward_healthcheck_broken_total": set(),
    "coredns_proxy_request_duration_seconds": {"proxy_name", "to", "rcode"},
    "coredns_proxy_healthcheck_failures_total": {"proxy_name", "to"},
    "coredns_proxy_conn_cache_hits_total": {"proxy_name", "to", "proto"},
    "coredns_proxy_conn_cache_misses_total": {"proxy_name", "to", "proto"},
    "coredns_reload_failed_total": set(),
    "nodecache_handoff_given_total": set(),
    "nodecache_handoff_refused_total": set(),
    "nodecache_handoff_resumed_total": set(),
    "nodecache_handoff_received_entries": set(),
    "nodecache_handoff_takeover_seconds": set(),
    "nodecache_ready": set(),
    "nodecache_handoff_cache_given_total": set(),
    "nodecache_zone_degraded": {"zones"},
    "nodecache_refused_total": {"reason"},
    "nodecache_events_total": {"event"},
}
SETUP_METRICS = {"coredns_nodecache_setup_errors_total": {"errortype"}}

COREFILE = """cluster.local:{port} {{
    errors
    cache
    bind 127.0.0.1
    forward . 127.0.0.1:{up0} {{
        force_tcp
        max_fails 1
    }}
    prometheus 127.0.0.1:{mport}
    health 127.0.0.1:{mport}
    ready 127.0.0.1:{mport}
}}
"""


async def runtime_for(n, metrics_listen=""):
    setup = NodeSetup(NodeParams((), setup_interface=False, setup_iptables=False), {})
    rt = Runtime(n.agent, setup)
    rt.configure_http(n.agent.config, metrics_listen)
    await rt.http.start()
    return rt


async def get(port, path):
    def fetch():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return await asyncio.to_thread(fetch)


async def get_or_error(port, path):
    try:
        return await get(port, path)
    except OSError:
        return "unreachable"


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples_, name, **labels):
    hits = [v for (n, ls), v in samples_.items() if n == name and all((k, str(x)) in ls for k, x in labels.items())]
    return sum(hits)


def _corefile(mport):
    return COREFILE.replace("{mport}", str(mport))


def test_exact_counters_after_scripted_traffic():
    mport = client.free_port()

    async def go():
        async with node(_corefile(mport)) as n:
            rt = await runtime_for(n)
            rt.enter(Phase.SERVING)
            svc = build("svc-1.default.svc.cluster.local", QTYPE.A)
            for _ in range(3):
                await n.udp(svc)                                   # 1 miss + 2 hits
            nx = build("nope.default.svc.cluster.local", QTYPE.A, do=1)
            for _ in range(2):
                await n.tcp(nx)                                    # 1 miss + 1 hit, DO set
            await n.udp(build("www.example.com", QTYPE.A))         # no zone: REFUSED
            status, text = await get(mport, "/metrics")
            rt.close()
            return status, samples(text), n.up.port
    status, s, up_port = run(go())
    assert status == 200
    assert value(s, "coredns_dns_requests_total", proto="udp", zone="cluster.local.", type="A") == 3
    assert value(s, "coredns_dns_requests_total", proto="tcp", zone="cluster.local.", type="A") == 2
    assert value(s, "coredns_dns_requests_total", family="1") == 6
    assert value(s, "coredns_dns_responses_total", rcode="NOERROR") == 3
    assert value(s, "coredns_dns_responses_total", rcode="NXDOMAIN") == 2
    assert value(s, "coredns_dns_responses_total", rcode="REFUSED") == 1
    assert value(s, "coredns_dns_responses_total", rcode="NOERROR", plugin="cache") == 2
    assert value(s, "coredns_dns_do_requests_total") == 2
    assert value(s, "coredns_cache_hits_total", type="success") == 2
    assert value(s, "coredns_cache_hits_total", type="denial") == 1
    assert value(s, "coredns_cache_misses_total") == 2
    assert value(s, "coredns_cache_requests_total") == 5
    assert value(s, "coredns_cache_entries", type="success") == 1
    assert value(s, "coredns_cache_entries", type="denial") == 1
    assert value(s, "coredns_dns_request_duration_seconds_count") == 6
    assert value(s, "coredns_dns_response_size_bytes_count", proto="tcp") == 2
    to = f"127.0.0.1:{up_port}"
    assert value(s, "coredns_proxy_request_duration_seconds_count", to=to, rcode="NOERROR") == 1
    assert value(s, "coredns_proxy_request_duration_seconds_count", to=to, rcode="NXDOMAIN") == 1
    assert value(s, "coredns_proxy_conn_cache_misses_total", to=to, proto="tcp") == 1
    assert value(s, "coredns_proxy_conn_cache_hits_total", to=to, proto="tcp") == 1


def test_names_labels_and_naming_rules():
    mport, sport = client.free_port(), client.free_port()

    async def go():
        async with node(_corefile(mport)) as n:
            rt = await runtime_for(n, f"127.0.0.1:{sport}")
            rt.enter(Phase.SERVING)
            await n.udp(build("svc-1.default.svc.cluster.local", QTYPE.A, do=1))
            _, text = await get(mport, "/metrics")
            _, setup = await get(sport, "/metrics")
            rt.close()
            return text, setup
    text, setup = run(go())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    seen = {}
    for fam in families.values():
        if fam.name.startswith(("process_", "python_")):
            continue
        for smp in fam.samples:
            base = re.sub(r"_(bucket|count|sum)$", "", smp.name) if fam.type == "histogram" else smp.name
            seen.setdefault(base, set()).update(k for k in smp.labels if k != "le")
        # promlint-style rules
        assert re.fullmatch(r"(coredns|nodecache)_[a-z0-9_]+", fam.name), fam.name
        assert fam.documentation, fam.name
        if fam.type == "counter":
            assert all(smp.name.endswith("_total") for smp in fam.samples if not smp.name.endswith("_created"))
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_bytes")), fam.name
    assert seen == METRICS
    setup_seen = {s.name: set(s.labels) for f in text_string_to_metric_families(setup) for s in f.samples}
    assert setup_seen == SETUP_METRICS
    types = {s.labels["errortype"] for f in text_string_to_metric_families(setup) for s in f.samples}
    assert types == {"configmap", "interface_add", "interface_check", "iptables", "iptables_lock"}
    docs = DOCS.read_text()
    for name in list(METRICS) + list(SETUP_METRICS):
        assert f"`{name}`" in docs, f"docs/metrics.md does not list {name}"


def test_health_ready_transitions_and_http_errors():
    mport = client.free_port()

    async def go():
        async with node(_corefile(mport)) as n:
            rt = await runtime_for(n)
            steps = [await get(mport, "/ready")]                   # starting
            rt.enter(Phase.SERVING)
            steps.append(await get(mport, "/ready"))               # ready
            n.up.drop = 1.0
            await n.udp(build("svc-9.default.svc.cluster.local", QTYPE.A))  # fails: upstream down
            steps.append(await get(mport, "/ready"))               # down for seconds: still ready
            for up in n.agent.blocks[0].forward_stage.forwarder.upstreams:
                assert not up.healthy
                up.down_since -= UNREADY_AFTER_DOWN                # ... and for long
            steps.append(await get(mport, "/ready"))
            n.up.drop = 0.0
            rt.enter(Phase.HANDED_OFF)
            steps.append(await get(mport, "/ready"))
            health = await get(mport, "/health")
            missing = await get(mport, "/nope")
            reader, writer = await asyncio.open_connection("127.0.0.1", mport)
            writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
            bad_method = await reader.read()
            writer.close()
            rt.close()
            return steps, health, missing, bad_method
    steps, health, missing, bad_method = run(go())
    assert steps[0] == (503, "starting\n")
    assert steps[1] == (200, "OK")
    assert steps[2] == (200, "OK")  # readiness does not flap on a short upstream outage
    assert steps[3][0] == 503 and "zone cluster.local.: no healthy upstream for 1" in steps[3][1]
    assert steps[4] == (503, "handed off to a successor\n")
    assert health == (200, "OK") and missing[0] == 404
    assert bad_method.startswith(b"HTTP/1.1 405")


TWO_ZONES = COREFILE + """example.org:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up1} {{
        force_tcp
        max_fails 1
    }}
}}
"""


def test_one_zone_down_is_degraded_not_unready_every_zone_down_is_unready():
    """Readiness means "this node's pods get answers": a zone whose upstream
    is gone (the node's resolv.conf upstream, say) shows in /ready's body and
    nodecache_zone_degraded while the process stays Ready; when every zone
    is down it is NotReady. Control: the old rule (any zone down -> 503)
    fails the first step."""
    mport = client.free_port()

    async def go():
        async with node(TWO_ZONES.replace("{mport}", str(mport)), upstreams=2) as n:
            rt = await runtime_for(n)
            rt.enter(Phase.SERVING)
            steps = []
            for i, zone_name in ((1, "x.example.org"), (0, "svc-9.default.svc.cluster.local")):
                n.upstreams[i].drop = 1.0
                await n.udp(build(zone_name, QTYPE.A))       # fails: marks that upstream down
                block = next(b for b in n.agent.blocks if zone_name.endswith(b.cfg.zones[0].rstrip(".")))
                for up in block.forward_stage.forwarder.upstreams:
                    up.down_since -= UNREADY_AFTER_DOWN
                steps.append((await get(mport, "/ready"),
                              value(samples((await get(mport, "/metrics"))[1]), "nodecache_zone_degraded",
                                    zones="example.org.")))
            rt.close()
            return steps
    (one, one_gauge), (both, _) = run(go())
    assert one[0] == 200 and one[1].startswith("OK\ndegraded: zone example.org.: no healthy upstream"), one
    assert one_gauge == 1
    assert both[0] == 503 and "zone cluster.local.: no healthy upstream" in both[1], both
    assert "zone example.org.: no healthy upstream" in both[1]


def test_an_http_port_taken_at_start_is_served_once_it_is_free(caplog):
    """A taken metrics/health port is logged and DNS keeps serving. During a
    migration node-cache holds those ports until it exits: the agent keeps
    retrying (logging the failure once) and serves them as soon as they are
    free, so kubelet's liveness probe finds it. Control: freed but before
    the retry runs, /health is unreachable."""
    caplog.set_level("INFO", logger="nodecache.http")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    mport = taken.getsockname()[1]

    async def go():
        async with node(_corefile(mport)) as n:
            rt = await runtime_for(n)
            assert f"127.0.0.1:{mport}" in rt.http.failed
            assert DNSRecord.parse(await n.udp(build("svc-1.default.svc.cluster.local", QTYPE.A))).rr
            await rt.http.start()                        # still taken: a second failure, not logged again
            taken.close()
            control = await get_or_error(mport, "/health")
            import nodecache.observe.http as http_mod
            http_mod.RETRY, old = 0.05, http_mod.RETRY
            retry = asyncio.get_running_loop().create_task(rt.http.retry())
            try:
                for _ in range(100):
                    if not rt.http.failed:
                        break
                    await asyncio.sleep(0.02)
                health = await get(mport, "/health")
            finally:
                retry.cancel()
                http_mod.RETRY = old
                rt.close()
            return control, health
    control, health = run(go())
    assert control == "unreachable" and health == (200, "OK")
    assert "DNS keeps serving" in caplog.text
    assert caplog.text.count("cannot serve") == 1 and "(it was: Address already in use)" in caplog.text


def test_forwarding_loop_is_contained():
    corefile = """.:{port} {{
    bind 127.0.0.1
    loop
    forward . 127.0.0.1:{port}
    ready 127.0.0.1:%d
}}
example.com:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{up0}
}}
"""
    mport = client.free_port()

    async def go():
        async with node(corefile % mport) as n:
            rt = await runtime_for(n)
            rt.enter(Phase.SERVING)
            n.agent.start_blocks()
            for _ in range(100):
                if n.agent.blocks[0].down:
                    break
                await asyncio.sleep(0.02)
            looped = DNSRecord.parse(await n.udp(build("anything.org", QTYPE.A)))
            fine = DNSRecord.parse(await n.udp(build("www.example.com", QTYPE.A)))
            ready = await get(mport, "/ready")
            rt.close()
            return looped, fine, ready
    looped, fine, ready = run(go())
    assert looped.header.rcode == 2
    assert fine.rr
    assert ready[0] == 200 and "degraded: zone .: forwarding loop detected" in ready[1]  # example.com answers


def test_scrape_during_reload():
    mport = client.free_port()

    async def go():
        async with node(_corefile(mport)) as n:
            rt = await runtime_for(n)
            rt.enter(Phase.SERVING)
            text = _corefile(mport).format(port=n.port, up0=n.up.port)
            results = []

            async def scrape():
                for _ in range(30):
                    results.append(await get(mport, "/metrics"))

            async def reload():
                for ttl in (10, 20, 30, 40, 50):
                    await n.agent.reload(parse_config(text.replace("cache", f"cache {ttl}")))
                    await rt.reconfigure_http(n.agent.config, "")
                    await n.udp(build("svc-2.default.svc.cluster.local", QTYPE.A))
                    await asyncio.sleep(0.02)
            await asyncio.gather(scrape(), reload())
            rt.close()
            return results
    results = run(go())
    assert all(status == 200 for status, _ in results)
    for _, text in results:
        list(text_string_to_metric_families(text))  # every scrape parses


def test_probe_and_json_logs(tmp_path):
    port, status = client.free_port(), tmp_path / "status.sock"
    conf = tmp_path / "Corefile"
    conf.write_text(f".:{port} {{\n bind 127.0.0.1\n forward . 127.0.0.1:1\n}}\n")
    cli = [sys.executable, "-m", "nodecache"]
    before = subprocess.run(cli + ["probe", "ready", "-status-socket", str(status)], capture_output=True, text=True)
    assert before.returncode == 1 and "no answer" in before.stdout  # not started: not ready
    proc = subprocess.Popen(cli + ["run", "-conf", str(conf), "-handoff-dir", str(tmp_path / "h"),
                                   "-metrics-listen-address", "", "-status-socket", str(status),
                                   "-log-format", "json"], stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["level"] == "info" and "msg" in first
        for _ in range(100):
            live = subprocess.run(cli + ["probe", "live", "-status-socket", str(status)], capture_output=True)
            if live.returncode == 0:
                break
        ready = subprocess.run(cli + ["probe", "ready", "-status-socket", str(status)], capture_output=True, text=True)
        assert live.returncode == 0 and ready.returncode == 0, ready.stdout
    finally:
        proc.terminate()
        proc.wait(15)


def test_one_echo_of_the_loop_probe_is_not_a_loop():
    from nodecache.plugins.loop.detector import THRESHOLD, LoopDetector
    det = LoopDetector("cluster.local.")
    assert not any(det.sighted(det.key) for _ in range(THRESHOLD - 1)) and not det.detected
    assert not det.sighted(b"\x03www\x07example\x00\x00\x01\x00\x01\x00")
    assert det.sighted(det.key) and det.detected and det.seen == THRESHOLD


def test_events_metric_counts_what_coredns_series_do_not_show():
    from nodecache.run.metrics import exposition

    async def go():
        async with node(CLUSTER) as n:
            rt = await runtime_for(n)
            await n.udp(build("svc-1.default.svc.cluster.local", QTYPE.A))
            bad = build("svc-1.default.svc.cluster.local", QTYPE.A)
            formerr = bad[:4] + b"\x00\x02" + bad[6:]  # qdcount 2: FORMERR
            await n.udp(formerr)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.sendto(b"\x00" * 5, ("127.0.0.1", n.port))  # unreadable: dropped
            sock.close()
            await asyncio.sleep(0.2)
            text = exposition(rt.dns_registry)[2].decode()
            rt.close()
            return text
    text = run(go())
    events = {s.labels["event"]: s.value for f in text_string_to_metric_families(text)
              if f.name == "nodecache_events" for s in f.samples}
    assert events["error_reply"] == 1 and events["dropped"] == 1 and events["tcp_oversized"] == 0
    assert events["upstream_reply_unmatched"] == 0 and events["upstream_attempt_failed"] == 0
    assert events["cache_budget_evicted"] == 0 and events["cache_too_big"] == 0 and events["rules_added"] == 0
    assert len(events) == 25 and events["udp_receive_error"] == 0
    assert events["tcp_queued_per_client"] == events["udp_poll_budget_spent"] == 0
    assert events["udp_poll"] == events["udp_poll_empty"] == 0  # (-udp-coalesce is off by default)


def test_an_exception_nobody_caught_counts_as_a_panic():
    async def go():
        async with node(CLUSTER) as n:
            rt = await runtime_for(n)
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(rt.on_loop_exception)  # as run_node does
            loop.call_soon(lambda: 1 / 0)
            await asyncio.sleep(0.05)
            rt.close()
            return rt.panics
    assert run(go()) == 1
