"""Pod names for ``nodecache top``: which pod a client address is.

Opt-in (``-pod-names``): with a service-account token mounted and RBAC that
allows ``list`` and ``watch`` of pods (daemonset/components/pod-names), a
thread lists this node's pods (field selector ``spec.nodeName=NODE``, so
the API server sends only them) and then watches them, keeping
``pod IP -> namespace/name``; on any error it waits (doubling, 1 s to
60 s) and lists again. Nothing here touches the query path: ``top``'s
snapshot looks names up when it is read. Host-network pods share the
node's address and stay unnamed. Plain HTTP and the API's TLS are both
spoken by the stdlib (``http.client``), with the service account's CA.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import urllib.parse

log = logging.getLogger("nodecache.podnames")

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0


class PodNames:
    def __init__(self, api: str, node: str, token_file: str = f"{SA}/token", ca_file: str = f"{SA}/ca.crt"):
        self.api = urllib.parse.urlsplit(api)
        self.node, self.token_file, self.ca_file = node, token_file, ca_file
        self.by_ip: dict[str, str] = {}
        self.failures = 0
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    @classmethod
    def in_cluster(cls) -> "PodNames | None":
        """From the pod's environment, or None (and why, logged) when it lacks something."""
        host, port, node = (os.environ.get(k, "") for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                                                             "NODE_NAME"))
        missing = [what for what, ok in (("KUBERNETES_SERVICE_HOST/PORT", host and port), ("NODE_NAME", node),
                                         ("a service-account token", os.path.exists(f"{SA}/token"))) if not ok]
        if missing:
            log.warning("-pod-names: no %s; clients are shown by address (daemonset/components/pod-names)",
                        ", ".join(missing))
            return None
        return cls(f"https://{host if ':' not in host else f'[{host}]'}:{port}", node)

    def name(self, address: str) -> str | None:
        return self.by_ip.get(address)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="pod-names", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    # -- the thread -------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopped.is_set():
            try:
                version = self._list()
                backoff = BACKOFF_FIRST
                self._watch(version)
            except Exception as exc:  # anything: the names go stale, never the agent
                self.failures += 1
                log.warning("-pod-names: %s; retrying in %.0f s", exc, backoff)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _request(self, query: dict, timeout: float):
        if self.api.scheme == "https":
            conn = http.client.HTTPSConnection(self.api.hostname, self.api.port, timeout=timeout,
                                               context=ssl.create_default_context(cafile=self.ca_file))
        else:
            conn = http.client.HTTPConnection(self.api.hostname, self.api.port, timeout=timeout)
        with open(self.token_file) as f:
            token = f.read().strip()
        path = "/api/v1/pods?" + urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={self.node}", **query})
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"GET pods: HTTP {resp.status} {resp.read(300)!r} (RBAC: list, watch pods)")
        return conn, resp

    def _list(self) -> str:
        conn, resp = self._request({}, 30)
        body = json.loads(resp.read())
        conn.close()
        self.by_ip = {ip: name for pod in body.get("items", []) for ip, name in _addresses(pod)}
        return body.get("metadata", {}).get("resourceVersion", "")

    def _watch(self, version: str) -> None:
        conn, resp = self._request({"watch": "1", "resourceVersion": version, "timeoutSeconds": "300"}, 330)
        try:
            while not self.stopped.is_set():
                line = resp.readline()
                if not line:
                    return  # the server ended the watch: list again
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise OSError(f"watch: {event.get('object', {}).get('message', 'error')}")
                pod = event.get("object", {})
                names = dict(_addresses(pod))
                current = dict(self.by_ip)
                for ip in [ip for ip, n in current.items() if n == _name(pod)]:
                    del current[ip]
                if event.get("type") != "DELETED":
                    current.update(names)
                self.by_ip = current  # replaced whole: the loop thread reads it without a lock
        finally:
            conn.close()


def _name(pod: dict) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _addresses(pod: dict):
    spec, status = pod.get("spec", {}), pod.get("status", {})
    if spec.get("hostNetwork"):
        return
    for entry in status.get("podIPs") or ([{"ip": status["podIP"]}] if status.get("podIP") else []):
        if entry.get("ip"):
            yield entry["ip"], _name(pod)
