"""The README's local links and images point at files of the checkout (screenshots, bench reports,
workflows), so a renamed file cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def local_links(text: str) -> list[str]:
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_the_link_pattern_finds_local_links_only():
    assert local_links("![a](docs/x.png) [b](https://e.org/y) [c](bench/R.md#top)") == ["docs/x.png", "bench/R.md"]


def test_every_local_link_of_the_docs_exists():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]:
        missing = [t for t in local_links(doc.read_text(encoding="utf-8")) if not (doc.parent / t).exists()]
        assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"
