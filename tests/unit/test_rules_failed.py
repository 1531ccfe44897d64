"""A rule that cannot be written is counted, so the start-up line says how
many failed instead of "N rules in place" (without CAP_NET_ADMIN every
rule failed and the log said 12 were in place)."""
from nodecache.node import nftrules, rules
from nodecache.node.rules import IptablesRules, RuleError


def _failing_backend(monkeypatch, message: str) -> IptablesRules:
    """Our iptables rules, every one of which fails with ``message``."""
    def fail(rule):
        raise RuleError("iptables", message)
    monkeypatch.setattr(rules, "ensure_rule", fail)
    monkeypatch.setattr(rules, "remove_rule", lambda rule: False)
    return IptablesRules(["169.254.20.10"], {"169.254.20.10": {53}}, 8080, True, None)


def test_iptables_rules_that_fail_are_counted(monkeypatch):
    backend = _failing_backend(monkeypatch, "Permission denied (you must be root)")
    errors = []
    assert backend.ensure(errors.append) == 0
    assert backend.failed == len(backend) == len(errors) > 0
    monkeypatch.setattr(rules, "ensure_rule", lambda rule: True)
    backend.ensure(errors.append)
    assert backend.failed == 0


def test_a_missing_binary_fails_every_rule_at_once(monkeypatch):
    backend = _failing_backend(monkeypatch, "iptables not found: cannot set up the rule")
    errors = []
    backend.ensure(errors.append)
    assert backend.failed == len(backend) and len(errors) == 1


def test_an_nftables_table_that_cannot_be_written_fails_whole(monkeypatch):
    backend = nftrules.NftRules(["169.254.20.10"], {"169.254.20.10": {53}}, 8080, True, None)
    monkeypatch.setattr(nftrules, "listing", lambda: None)

    def refuse(text):
        raise RuleError("iptables", "nft: Operation not permitted")
    monkeypatch.setattr(nftrules, "apply", refuse)
    backend.ensure(lambda exc: None)
    assert backend.failed == len(backend) > 0
