"""observe.podnames against a stand-in API server: the node's pods listed
with the field selector and the token, then watched (added, changed,
deleted); top shows namespace/pod; a refusal (no RBAC) is retried, never
fatal; without the pod's environment the feature says what is missing."""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from nodecache.dns.wire import scan
from nodecache.emulated.client import build
from nodecache.observe import podnames
from nodecache.observe.top import Top



def _key(name: str, qtype: int) -> bytes:
    """The cache key the query path hands the top tables."""
    return scan(build(name, qtype))[0]

def _pod(ns, name, ip, host_network=False):
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"hostNetwork": host_network},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


class Api(BaseHTTPRequestHandler):
    seen: list = []
    status = 200

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Api.seen.append((url.path, query, self.headers.get("Authorization")))
        if Api.status != 200:
            self.send_response(Api.status)
            self.end_headers()
            self.wfile.write(b'{"message": "pods is forbidden"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if query.get("watch") != "1":
            body = {"metadata": {"resourceVersion": "7"},
                    "items": [_pod("default", "web-1", "10.244.1.5"), _pod("kube-system", "proxy", "10.0.0.3", True)]}
            self.wfile.write(json.dumps(body).encode())
            return
        for kind, pod in (("ADDED", _pod("team-a", "api-0", "10.244.1.9")),
                          ("DELETED", _pod("default", "web-1", "10.244.1.5"))):
            self.wfile.write(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
            self.wfile.flush()
            time.sleep(0.05)
        time.sleep(0.3)  # then the watch ends: the client lists again


@pytest.fixture
def api():
    Api.seen, Api.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def _until(check, limit=5.0):
    end = time.monotonic() + limit
    while not check() and time.monotonic() < end:
        time.sleep(0.02)
    return check()


def test_the_nodes_pods_are_listed_then_watched_and_named_in_top(api, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    names = podnames.PodNames(f"http://127.0.0.1:{api.server_port}", "node-a", str(token), "")
    names.start()
    try:
        assert _until(lambda: names.name("10.244.1.9") == "team-a/api-0")
        assert _until(lambda: names.name("10.244.1.5") is None)  # deleted
        assert names.name("10.0.0.3") is None  # a host-network pod has the node's address
    finally:
        names.stop()
    path, query, auth = Api.seen[0]
    assert path == "/api/v1/pods" and query == {"fieldSelector": "spec.nodeName=node-a"} and auth == "Bearer s3cret"
    assert any(q.get("watch") == "1" and q.get("resourceVersion") == "7" for _, q, _ in Api.seen)
    top = Top()
    top.pod_name = names.name
    top.miss("10.244.1.9", _key("svc-1.default.svc.cluster.local", 1), "udp")
    top.miss("10.244.7.7", _key("svc-1.default.svc.cluster.local", 1), "udp")
    rows = {r["client"]: r.get("address") for r in top.snapshot()["clients"]}
    assert rows == {"team-a/api-0": "10.244.1.9", "10.244.7.7": None}


def test_a_refusal_is_retried_and_never_fatal(api, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(podnames, "BACKOFF_FIRST", 0.05)
    Api.status = 403
    token = tmp_path / "token"
    token.write_text("t")
    names = podnames.PodNames(f"http://127.0.0.1:{api.server_port}", "node-a", str(token), "")
    with caplog.at_level(logging.WARNING, logger="nodecache.podnames"):
        names.start()
        assert _until(lambda: names.failures >= 2)
        Api.status = 200
        assert _until(lambda: names.name("10.244.1.5") == "default/web-1" or names.name("10.244.1.9") is not None)
        names.stop()
    assert "HTTP 403" in caplog.text and "RBAC" in caplog.text


def test_without_the_pods_environment_it_says_what_is_missing(monkeypatch, caplog):
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "NODE_NAME"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level(logging.WARNING, logger="nodecache.podnames"):
        assert podnames.PodNames.in_cluster() is None
    assert "NODE_NAME" in caplog.text and "KUBERNETES_SERVICE_HOST" in caplog.text


def test_the_component_grants_read_only_pods_and_turns_the_flag_on():
    from pathlib import Path
    kit = Path(__file__).resolve().parent.parent.parent / "daemonset" / "components" / "pod-names"
    role = next(d for d in yaml.safe_load_all((kit / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    text = (kit / "kustomization.yaml").read_text()
    assert "-pod-names" in text and "spec.nodeName" in text and "automountServiceAccountToken" in text
