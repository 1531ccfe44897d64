"""Every guarantee per datapath, as figures: the emulated node (root) with
kube-proxy in iptables mode and in nftables mode, the same events in each.

    python -m bench.datapaths [--modes iptables nftables]

1. crash: pods on the kube-dns ClusterIP (node-local-dns's args in that
   mode), the agent SIGKILLed and restarted 2 s later, glibc lookups
   throughout: failed lookups, and pod->agent conntrack entries afterwards;
2. link-local crash: pods on the link-local address, the agent SIGKILLed
   and down for 3 s: failed lookups (nftables mode fails this address open
   through kube-proxy; iptables mode cannot, see docs/node.md);
3. upgrades: 3 hot handoffs to new processes while a pod resolves with glibc
   and sends UDP at 200 queries/s: failed lookups, lost queries;
4. churn: the cluster DNS replicas rolled, one OOM-killed, both gone for a
   second, while a pod sends only misses at 300/s: lost and SERVFAIL;
5. migration: a stand-in for node-cache serves the pod; the agent starts
   beside it, then node-cache is SIGTERMed and tears its networking down,
   glibc lookups and 200 UDP q/s throughout: failed lookups, lost queries;
   for upstream's layout and for each installer's (kubespray, kops, the
   Helm chart: ``nodecache_lab.layouts``), the agent run as its overlay says;
6. Cilium LRP (agent pods in the pod network, a stand-in for the redirect
   following /ready every 0.2 s, kube-proxy's DNAT when no pod is Ready):
   a surge rollout under glibc lookups and 200 UDP q/s to the ClusterIP
   (failed, lost, names the cluster DNS had to answer again), and the lone
   pod SIGKILLed (failed lookups until the fallback).

Traffic only inside the namespaces it creates (169.254.0.0/16, fd00::/8);
each scenario bounded in time.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
from pathlib import Path

from nodecache_lab.emunode import (CLUSTER_V4, LOCAL_V4, LOCAL_V6, MODES, EmulatedNode,
                                       missing_requirements, sh)
from nodecache_lab.layouts import LAYOUTS, overlay
from nodecache_lab.nodeload import Lookups, churn, migrate
from nodecache_lab.podnetwork import lone_backend_killed, surge_rollout


def crash(mode: str, pods_on: str, down: float) -> dict:
    with EmulatedNode(mode=mode) as n:
        n.pod_nameserver(pods_on)
        n.start_agent("-syncinterval", "1", local_ips=f"{LOCAL_V4},{CLUSTER_V4},{LOCAL_V6}")
        n.wait_agent()
        lookups = Lookups(n, 4.0 + down)
        lookups.start()
        time.sleep(1.5)
        n.agent.send_signal(signal.SIGKILL)
        n.agent.wait(10)
        time.sleep(down)
        n.start_agent("-syncinterval", "1", local_ips=f"{LOCAL_V4},{CLUSTER_V4},{LOCAL_V6}", log_name="agent2.log")
        n.wait_agent()
        lookups.join(60)
        sh("conntrack", "-F", ns=n.node, check=False)
        for i in range(5):
            n.getent(f"svc-{50 + i}.default")
        tracked = [ln for ln in n.conntrack().splitlines() if "dport=53 " in ln and f"dst={pods_on} " in ln]
        n.stop_agent()
        return {"lookups": len(lookups.results), "failed": len(lookups.failed), "tracked": len(tracked),
                "slow": len(lookups.slow), "slowest": max(lookups.seconds_each, default=0.0)}


def upgrades(mode: str, handoffs: int = 3) -> dict:
    with EmulatedNode(mode=mode) as n:
        n.start_agent("-syncinterval", "1", log_name="agent0.log")
        n.wait_agent()
        names = [f"svc-{i % 100}.default.svc.cluster.local" for i in range(200 * (2 * handoffs + 2))]
        load = n.pod_load(names, 200.0)
        lookups = Lookups(n, 2.0 * handoffs + 1.5)
        lookups.start()
        for k in range(1, handoffs + 1):
            time.sleep(1.0)
            old = n.agent
            n.start_agent("-syncinterval", "1", log_name=f"agent{k}.log")
            n.wait_agent(needle="READY sent")
            old.send_signal(signal.SIGTERM)
            old.wait(20)
        lookups.join(60)
        result = json.loads(load.stdout.read())
        load.wait(30)
        n.stop_agent()
        return {"lookups": len(lookups.results), "failed": len(lookups.failed), "sent": result["sent"],
                "lost": result["unanswered"], "errors": sum(v for k, v in result["rcodes"].items() if k != "0")}


def upstream_churn(mode: str, rate: float = 300.0, seconds: float = 10.0) -> dict:
    with EmulatedNode(mode=mode) as n:
        n.start_agent()
        n.wait_agent()
        tag = f"m{int(time.time() * 1000) % 10**8}"
        load = n.pod_load([f"{tag}-{i}.default.svc.cluster.local" for i in range(int(rate * seconds))], rate)
        churn(n)
        result = json.loads(load.stdout.read())
        load.wait(seconds + 30)
        n.stop_agent()
        return {"sent": result["sent"], "lost": result["unanswered"], "servfail": result["rcodes"].get("2", 0)}


OVERLAYS = Path(__file__).resolve().parent.parent / "daemonset" / "overlays"


def migration(mode: str, installer: str = "upstream") -> dict:
    layout = LAYOUTS[installer]
    how = {} if installer == "upstream" else dict(zip(("local_ips", "flags", "corefile"),
                                                      overlay(OVERLAYS / installer, CLUSTER_V4)))
    with EmulatedNode(mode=mode) as n:
        m = migrate(n, *how.pop("flags", ()), layout=layout, **how)
    lookups, paced = m["lookups"], m["paced"]
    return {"lookups": len(lookups.results), "failed": len(lookups.failed), "sent": paced["sent"],
            "lost": paced["unanswered"], "errors": sum(v for k, v in paced["rcodes"].items() if k != "0"),
            "restored": layout.local_ip in m["interface"] and not m["standby_after"], "health": m["health"]}


def cilium(mode: str) -> tuple[dict, dict]:
    with EmulatedNode(mode=mode) as n:
        r = surge_rollout(n)
    with EmulatedNode(mode=mode) as n:
        k = lone_backend_killed(n)
    lookups, paced = r["lookups"], r["paced"]
    return ({"lookups": len(lookups.results), "failed": len(lookups.failed), "sent": paced["sent"],
             "lost": paced["unanswered"], "refill": r["refill"], "unready": r["unready_after"],
             "warm": r["warm_entries"], "why": "" if r["refill"] == 0 else r["logs"][1][-1500:]}, k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES), help="kube-proxy modes (default both)")
    args = ap.parse_args(argv)
    print(f"{'mode':<9} {'scenario':<46} result")
    status = 0
    for mode in args.modes:
        why = missing_requirements(mode)
        if why is not None:
            print(f"{mode:<9} skipped: {why}")
            continue
        try:
            c = crash(mode, CLUSTER_V4, 2.0)
            print(f"{mode:<9} {'crash + restart 2 s later, pods on ClusterIP':<46} {c['failed']} of {c['lookups']} "
                  f"lookups failed, {c['slow']} over 1 s (slowest {c['slowest']:.2f} s); {c['tracked']} pod->agent "
                  f"conntrack entries after", flush=True)
            ll = crash(mode, LOCAL_V4, 3.0)
            print(f"{mode:<9} {'crash, down 3 s, pods on link-local':<46} {ll['failed']} of {ll['lookups']} "
                  f"lookups failed, {ll['slow']} over 1 s (slowest {ll['slowest']:.2f} s)", flush=True)
            u = upgrades(mode)
            print(f"{mode:<9} {'3 hot handoffs, glibc + 200 UDP q/s':<46} {u['failed']} of {u['lookups']} lookups "
                  f"failed; {u['lost']} of {u['sent']} queries lost, {u['errors']} errors", flush=True)
            ch = upstream_churn(mode)
            print(f"{mode:<9} {'CoreDNS rolled, killed, gone 1 s; 300 misses/s':<46} {ch['lost']} of {ch['sent']} "
                  f"lost, {ch['servfail']} SERVFAIL", flush=True)
            for installer in LAYOUTS:
                mg = migration(mode, installer)
                print(f"{mode:<9} {'node-cache -> nodecache (' + installer + '), glibc + 200 UDP q/s':<46} "
                      f"{mg['failed']} of {mg['lookups']} lookups failed; {mg['lost']} of {mg['sent']} queries "
                      f"lost, {mg['errors']} errors; interface ours after: {'yes' if mg['restored'] else 'NO'}; our "
                      f"/health answered {'never' if mg['health'] is None else format(mg['health'], '.1f') + ' s'} "
                      f"after node-cache's exit", flush=True)
            r, k = cilium(mode)
            print(f"{mode:<9} {'cilium LRP: surge rollout, glibc + 200 UDP q/s':<46} {r['failed']} of {r['lookups']} "
                  f"lookups failed; {r['lost']} of {r['sent']} queries lost; {r['refill']} names refilled; old pod "
                  f"unready {r['unready'] * 1000:.0f} ms after SIGTERM; new pod started with {r['warm']} "
                  f"cache entries", flush=True)
            if r["why"]:
                print(f"          (refilled: the new pod's log ends) {r['why']}", flush=True)
            print(f"{mode:<9} {'cilium LRP: the lone pod SIGKILLed':<46} {k['failed']} of {k['lookups']} lookups "
                  f"failed, {k['slow']} over 1 s; fallback to the cluster DNS {k['fallback_after'] * 1000:.0f} ms "
                  f"after the kill", flush=True)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            print(f"{mode:<9} failed: {exc}")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
