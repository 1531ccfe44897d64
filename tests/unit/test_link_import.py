"""pyroute2 is imported for IPRoute alone (node.link): the package's
``__init__``, which loads every pyroute2 subsystem, never runs. Each case in
a fresh interpreter, since an import cannot be undone."""
import subprocess
import sys

PROBE = """
import sys
{before}
from nodecache.node.link import _netlink
first = _netlink()
assert _netlink() is first                      # imported once, whatever the caller
IPRoute, NetlinkError = first
with IPRoute() as ipr:
    assert ipr.link_lookup(ifname="lo")         # a real netlink request
assert issubclass(NetlinkError, Exception)
print(sorted(m.split(".")[1] for m in sys.modules if m.startswith("pyroute2.") and m.count(".") == 1))
"""


def _loaded(before: str = "") -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)  # noqa: S307 - our own probe's list of names


def test_iproute_is_imported_without_the_packages_other_subsystems():
    loaded = _loaded()
    assert "iproute" in loaded and "netlink" in loaded
    assert not {"ndb", "ipdb", "conntrack", "nftables"} & set(loaded), loaded


def test_negative_control_the_package_import_loads_them_all_and_is_then_used_as_it_is():
    loaded = _loaded("import pyroute2")
    assert {"ndb", "ipdb", "conntrack"} <= set(loaded), loaded
