"""nodecache top --json through the status socket of a running agent: a
client flooding the node with failing lookups is ranked first, with its
NXDOMAINs and walk steps; the well-behaved clients follow."""
from __future__ import annotations

import asyncio
import json
import socket
import sys

from nodecache.emulated.client import build
from nodecache.run.status import Phase
from nodecache_lab.harness import CLUSTER, node
from test_observe import runtime_for


async def _ask(port: int, source: str, queries: list[bytes]) -> None:
    """From one socket at ``source`` (a loopback address: one client)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    for q in queries:
        await loop.sock_sendto(sock, q, ("127.0.0.1", port))
        await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    sock.close()


async def _top(tmp_path):
    async with node(CLUSTER) as n:
        rt = await runtime_for(n)
        rt.enter(Phase.SERVING)
        status = tmp_path / "status.sock"
        rt.start_status(str(status))
        flood = [build(f"gone-{i}.default.svc.cluster.local", 1, qid=i) for i in range(400)]  # every one a miss
        calm = [build(f"svc-{i % 7}.default.svc.cluster.local", 1, qid=i) for i in range(40)]
        await asyncio.gather(_ask(n.port, "127.0.0.9", flood), _ask(n.port, "127.0.0.2", calm),
                             _ask(n.port, "127.0.0.3", calm))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "nodecache", "top", "--json",
                                                    "-status-socket", str(status), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        rt.close()
        return proc.returncode, json.loads(out)


def test_top_json_ranks_the_flooding_client_first(tmp_path):
    code, top = asyncio.run(_top(tmp_path))
    assert code == 0
    first, *others = top["clients"]
    assert first["client"].split(":")[0] == "127.0.0.9" and first["queries"] >= 400
    assert first["nxdomain"] == first["walk_steps"] == 400  # NXDOMAIN for names under svc: search-walk steps
    assert {c["client"].split(":")[0] for c in others} == {"127.0.0.2", "127.0.0.3"}
    assert all(c["queries"] < first["queries"] for c in others)
    assert top["failing"][0]["client"].split(":")[0] == "127.0.0.9" and top["failing"][0]["rcode"] == "NXDOMAIN"
    assert 0 < len(top["names"]) <= top["slots"]  # 480 names asked: the table keeps its slots


def test_the_top_clients_metric_is_off_by_default_and_at_most_n_series():
    from nodecache.run.metrics import exposition
    from prometheus_client.parser import text_string_to_metric_families

    async def go(n_series):
        async with node(CLUSTER) as n:
            rt = await runtime_for(n)
            rt.top_clients = n_series
            for i in range(6):
                await _ask(n.port, f"127.0.0.{30 + i}", [build(f"svc-{i}.default.svc.cluster.local", 1)])
            text = exposition(rt.dns_registry)[2].decode()
            rt.close()
            return [s for f in text_string_to_metric_families(text) if f.name == "nodecache_top_client_queries"
                    for s in f.samples]
    assert asyncio.run(go(0)) == []
    series = asyncio.run(go(3))
    assert len(series) == 3 and all(s.value >= 1 for s in series)
