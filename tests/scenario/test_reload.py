"""Configuration changes while serving: no query dropped, cache kept, a
broken new configuration keeps the old one."""
import asyncio

from dnslib import QTYPE, DNSRecord

from nodecache.emulated import client
from nodecache.emulated.client import build
from nodecache.config.parse import parse_config
from nodecache.node.reconcile import NodeParams, NodeSetup
from nodecache.run.configsource import ConfigSource, watch_config
from nodecache.run.params import RunParams
from nodecache.run.status import Runtime
from nodecache_lab.fakes import eventually
from nodecache_lab.harness import node

COREFILE = """.:{port} {{
    cache {ttl}
    bind 127.0.0.1
    forward . 127.0.0.1:{up0}
}}"""


async def test_reload_under_load_drops_nothing_and_keeps_the_cache():
    async with node(COREFILE.replace("{ttl}", "30"), delay=0.01) as n:
        await n.udp(build("warm.example.com", QTYPE.A))
        configs = [parse_config(COREFILE.format(port=n.port, up0=n.up.port, ttl=ttl))
                   for ttl in (60, 30, 120, 30, 90)]

        async def load():
            results = []
            for i in range(40):
                batch = [n.udp(build(f"n{i}-{j}.example.com" if j % 2 else "warm.example.com",
                                     QTYPE.A), timeout=3) for j in range(25)]
                results += await asyncio.gather(*batch, return_exceptions=True)
            return results

        async def reloads():
            for cfg in configs:
                await asyncio.sleep(0.05)
                await n.agent.reload(cfg)

        results, _ = await asyncio.gather(load(), reloads())
        failures = [r for r in results if isinstance(r, Exception) or DNSRecord.parse(r).header.rcode]
        assert not failures and len(results) == 1000
        assert n.up.names().count("warm.example.com.") == 1  # the entry moved with each reload
        assert n.agent.blocks[0].cfg.option("cache").success.max_ttl == 90


async def test_reload_adds_and_removes_listeners():
    async with node(COREFILE.replace("{ttl}", "30")) as n:
        port2 = client.free_port()
        text = COREFILE.format(port=n.port, up0=n.up.port, ttl=30)
        await n.agent.reload(parse_config(text + "\n" + text.replace(f".:{n.port}", f"example.com:{port2}")))
        rec = DNSRecord.parse(await client.udp("127.0.0.1", port2, build("a.example.com", QTYPE.A)))
        assert rec.rr
        await n.agent.reload(parse_config(text))
        await asyncio.sleep(0.1)
        try:
            await client.udp("127.0.0.1", port2, build("a.example.com", QTYPE.A), timeout=0.3)
            raise AssertionError("removed listener still answers")
        except (TimeoutError, ConnectionRefusedError):
            pass
        assert DNSRecord.parse(await n.udp(build("b.example.com", QTYPE.A))).rr


def _watched(tmp_path, n):
    """A Corefile for agent ``n`` on disk and what watches it: (conf, its
    text, params, source, node setup, runtime)."""
    conf = tmp_path / "Corefile"
    good = COREFILE.format(port=n.port, up0=n.up.port, ttl=30)
    conf.write_text(good)
    params = RunParams(conf=str(conf), base_corefile=str(tmp_path / "absent"), config_sync=0.05,
                       metrics_listen="")
    setup = NodeSetup(NodeParams((), setup_interface=False, setup_iptables=False), {})
    return conf, good, params, ConfigSource(params, {}), setup, Runtime(n.agent, setup)


async def test_broken_new_corefile_keeps_the_running_one(tmp_path):
    async with node(COREFILE.replace("{ttl}", "30")) as n:
        conf, good, params, source, setup, rt = _watched(tmp_path, n)
        watcher = asyncio.get_running_loop().create_task(watch_config(source, rt, params, asyncio.Event()))
        try:
            await asyncio.sleep(0)  # the watcher takes its first fingerprint
            conf.write_text(good.replace("cache 30", "cache 30\n    frobnicate"))
            await eventually(lambda: rt.reload_failed == 1, what="broken Corefile rejected")
            assert setup.errors["configmap"] == 1
            assert n.agent.blocks[0].cfg.option("cache").success.max_ttl == 30
            assert DNSRecord.parse(await n.udp(build("c.example.com", QTYPE.A))).rr
            conf.write_text(good.replace("cache 30", "cache 45"))
            await eventually(lambda: n.agent.blocks[0].cfg.option("cache").success.max_ttl == 45, what="reloaded")
        finally:
            watcher.cancel()


async def test_an_unexpected_error_while_reloading_does_not_end_reloading(tmp_path, monkeypatch):
    async with node(COREFILE.replace("{ttl}", "30")) as n:
        conf, good, params, source, setup, rt = _watched(tmp_path, n)
        real_load, calls = source.load, []

        def load(strict=True):
            calls.append(1)
            if len(calls) == 1:
                raise RecursionError("maximum recursion depth exceeded")
            return real_load(strict)
        monkeypatch.setattr(source, "load", load)
        watcher = asyncio.get_running_loop().create_task(watch_config(source, rt, params, asyncio.Event()))
        try:
            await asyncio.sleep(0)  # the watcher takes its first fingerprint
            conf.write_text(good.replace("cache 30", "cache 40"))
            await eventually(lambda: rt.reload_failed == 1, what="failed reload counted")
            assert not watcher.done()
            conf.write_text(good.replace("cache 30", "cache 45"))
            await eventually(lambda: n.agent.blocks[0].cfg.option("cache").success.max_ttl == 45,
                             what="still reloading after the failure")
        finally:
            watcher.cancel()


async def test_without_ipv6_the_wildcard_listener_survives_reloads_and_is_handed_over(monkeypatch):
    from nodecache.config.parse import parse_config
    from nodecache.server import agent as agent_mod
    from nodecache.server.agent import Agent, ListenError
    real = agent_mod.make_sockets

    def no_ipv6(addr, port):
        if addr == "::":
            raise ListenError(97, "cannot listen on :::53: Address family not supported by protocol")
        return real(addr, port)
    monkeypatch.setattr(agent_mod, "make_sockets", no_ipv6)
    from nodecache.emulated import client
    port = client.free_port()
    text = f".:{port} {{\n    cache\n    forward . 127.0.0.1:1\n}}\n"
    agent = Agent(parse_config(text, "no bind"))
    await agent.start()
    try:
        (listener,) = agent.listeners
        assert listener.addr == "::" and listener.udp.sockname()[0] == "0.0.0.0"
        assert {a for a, *_ in agent.listening_sockets()} == {"::"}  # what a heir looks up
        await agent.reload(parse_config(text.replace("cache", "cache 20"), "no bind"))
        assert agent.listeners == [listener]  # same sockets: no re-bind attempted
    finally:
        await agent.stop(0.1)
