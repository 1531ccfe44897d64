"""The nftables backend's table text and the choice of backend (no root)."""
import pytest

from nodecache.node import nftrules, reconcile
from nodecache.node.nftrules import ruleset


def _rules(text: str, chain: str) -> list[str]:
    body = text.split(f"chain {chain} {{", 1)[1].split("}", 1)[0]
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("type ")]


def test_fail_open_notrack_divert_and_health_per_address():
    text = ruleset(["169.254.20.10", "fd00::10"], {"169.254.20.10": {53, 5353}}, 8080, True, "10.96.0.11")
    pre = _rules(text, "prerouting")
    assert "ip daddr 169.254.20.10 udp dport 5353 socket transparent le 1 notrack" in pre
    assert "ip6 daddr fd00::10 tcp dport 53 socket transparent le 1 notrack" in pre
    assert "ip daddr 169.254.20.10 tcp dport 8080 socket transparent le 1 notrack" in pre
    out = _rules(text, "output")
    assert "ip saddr 169.254.20.10 udp sport 53 notrack" in out and "ip daddr 169.254.20.10 udp dport 53 notrack" in out
    divert = _rules(text, "divert")
    # same family only; another port is sent to the Service's 53
    assert divert == ["ip daddr 169.254.20.10 udp dport 53 ct state new ip daddr set 10.96.0.11",
                      "ip daddr 169.254.20.10 tcp dport 53 ct state new ip daddr set 10.96.0.11",
                      "ip daddr 169.254.20.10 udp dport 5353 ct state new ip daddr set 10.96.0.11 udp dport set 53",
                      "ip daddr 169.254.20.10 tcp dport 5353 ct state new ip daddr set 10.96.0.11 tcp dport set 53"]
    assert "priority mangle" in text.split("chain divert", 1)[1].split("\n", 2)[1]
    assert "accept" not in text.replace("policy accept", "")  # an accept of ours overrides nothing elsewhere


def test_without_fail_open_notrack_is_unconditional_and_nothing_is_diverted():
    text = ruleset(["169.254.20.10"], 53, None, False, "10.96.0.11")
    assert "socket" not in text and "chain divert" not in text
    assert _rules(text, "prerouting") == ["ip daddr 169.254.20.10 udp dport 53 notrack",
                                         "ip daddr 169.254.20.10 tcp dport 53 notrack"]


@pytest.mark.parametrize("nft, kube_nft, ipt, kube_ipt, want", [
    (True, True, True, True, "nftables"),      # kube-proxy's nftables tables win (iptables-nft leftovers too)
    (True, False, True, True, "iptables"),     # iptables or IPVS mode
    (True, False, True, False, "iptables"),    # no kube-proxy rules: iptables where it is installed
    (True, False, False, False, "nftables"),   # no iptables at all
    (False, False, True, False, "iptables"),
])
def test_auto_chooses_from_what_kube_proxy_wrote(monkeypatch, nft, kube_nft, ipt, kube_ipt, want):
    monkeypatch.setattr(reconcile.shutil, "which", lambda tool: "/usr/sbin/nft" if nft and tool == "nft" else None)
    monkeypatch.setattr(reconcile, "kube_proxy_tables", lambda: kube_nft)
    monkeypatch.setattr(reconcile, "iptables_usable", lambda: ipt)
    monkeypatch.setattr(reconcile, "kube_proxy_chains", lambda: kube_ipt)
    name, why, seen = reconcile.choose_backend("auto")
    assert name == want and why and seen == (kube_nft or kube_ipt)
    assert reconcile.choose_backend("iptables") == ("iptables", "-rules iptables", True)


def test_a_backend_moves_only_on_what_kube_proxy_wrote(monkeypatch):
    """A look that finds no kube-proxy rules (nft failing for a moment) must
    not flip the backend: only kube-proxy's tables or chains move it."""
    setup = reconcile.NodeSetup(reconcile.NodeParams(("169.254.20.10",)), {})
    answers = iter([("nftables", "kube-proxy's nftables tables exist", True),
                    ("iptables", "no kube-proxy rules found", False),
                    ("iptables", "kube-proxy's iptables chains exist", True)])
    monkeypatch.setattr(reconcile, "choose_backend", lambda wanted: next(answers))
    monkeypatch.setattr(reconcile.NftRules, "teardown", lambda self, on_error: 0)
    setup._choose_backend()
    assert setup.backend.name == "nftables"
    setup._choose_backend()
    assert setup.backend.name == "nftables"  # a default is no evidence
    setup._choose_backend()
    assert setup.backend.name == "iptables"


def test_the_flag_takes_the_three_choices():
    from nodecache.cli import parser
    assert parser().parse_args(["run", "-rules", "nftables"]).rules == "nftables"
    assert parser().parse_args(["run"]).rules == "auto"
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "-rules", "ebtables"])


def test_kube_proxy_tables_are_seen_in_nfts_listing(monkeypatch):
    class Done:
        returncode, stdout = 0, "table ip filter\ntable ip kube-proxy\n"
    monkeypatch.setattr(nftrules, "_nft", lambda *a, **k: Done())
    assert nftrules.kube_proxy_tables()
    Done.stdout = "table ip filter\ntable inet nodecache\n"
    assert not nftrules.kube_proxy_tables()
