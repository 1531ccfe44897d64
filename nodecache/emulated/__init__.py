"""The emulated cluster DNS (``upstream``: the replicas behind kube-dns,
scriptable) and a minimal DNS client (``client``): what `nodecache demo`,
`nodecache fake-upstream` and nodecache-bench run against. The serving
agent never imports them. Everything else the tests need (the emulated
node, the stand-ins for kube-proxy, Cilium and node-cache, fuzz targets)
is the lab, ``nodecache_lab`` in the repository, which is not installed."""
