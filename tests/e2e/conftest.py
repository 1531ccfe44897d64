"""Every guarantee on every datapath: e2e tests that take ``mode`` run once
with the emulated kube-proxy in iptables mode and once in nftables mode
(its ``kube-proxy`` tables; no iptables on the agent's PATH), each skipping
with its own reason where the tools are missing."""
import pytest

from nodecache_lab.emunode import MODES, missing_requirements


@pytest.fixture(scope="module", params=MODES)
def mode(request):
    why = missing_requirements(request.param)
    if why is not None:
        pytest.skip(f"emulated node in {request.param} mode: {why}")
    return request.param
