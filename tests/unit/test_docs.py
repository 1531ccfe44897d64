"""Documentation that cannot drift: the flag reference is generated from the
parser, every relative link resolves, and the README stays a front page."""
import re
from pathlib import Path

from nodecache.docgen import flags_markdown

ROOT = Path(__file__).resolve().parent.parent.parent


def test_flags_md_is_what_the_parser_generates():
    assert (ROOT / "docs" / "flags.md").read_text() == flags_markdown(), \
        "docs/flags.md is stale: python -m nodecache.docgen > docs/flags.md"


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
