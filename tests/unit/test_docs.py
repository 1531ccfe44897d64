"""Documentation that cannot drift: the flag and metric references are
generated from the parser and the collectors, every relative link
resolves, and the README stays a front page."""
import re
from pathlib import Path

from nodecache.docgen import flags_markdown, metrics_markdown

ROOT = Path(__file__).resolve().parent.parent.parent


def test_flags_md_is_what_the_parser_generates():
    assert (ROOT / "docs" / "flags.md").read_text() == flags_markdown(), \
        "docs/flags.md is stale: python -m nodecache.docgen flags > docs/flags.md"


def test_metrics_md_is_what_the_collectors_export():
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown(), \
        "docs/metrics.md is stale: python -m nodecache.docgen metrics > docs/metrics.md"


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "nodecache" / "plugins").glob("*/README.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


def test_corefile_md_lists_every_plugin_as_the_registry_says():
    from nodecache.plugins import registry
    text = (ROOT / "docs" / "corefile.md").read_text()
    for name in registry.ORDER:
        plugin = registry.PLUGINS[name]
        row = next((line for line in text.splitlines() if line.startswith(f"| [{name}](")), None)
        assert row is not None, f"docs/corefile.md has no row for {name}"
        assert (plugin.note or "-") in row, f"docs/corefile.md: {name}'s difference is stale"
