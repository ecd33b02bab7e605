"""The docs cannot drift from the code: the generated reference pages are what `tools/gen_docs.py` writes now, and
every relative link in README.md, docs/ and mkdocs.yml's nav points at a file that exists. Needs no mkdocs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target), with an optional "title"; <a href="..."> and <img src="..."> too.
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _relative_targets(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    out = []
    for target in MD_LINK.findall(text) + HTML_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto:, an anchor on the same page
        out.append(target)
    return out


def test_generated_reference_pages_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        "generated docs are stale; run `python tools/gen_docs.py` and commit the result:\n" + proc.stdout + proc.stderr)


def _anchors(md: Path) -> set[str]:
    """The ids GitHub and mkdocs give the headings of a page: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    out = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).strip()
        out.add(re.sub(r" ", "-", slug))
    return out


def test_every_relative_link_points_at_a_file():
    broken = []
    checked = 0
    for md in _markdown_files():
        for target in _relative_targets(md):
            file_part, _, anchor = unquote(target.split("?", 1)[0]).partition("#")
            if not file_part:
                continue
            checked += 1
            path = md.parent / file_part
            if not path.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 20  # the README and the guides link to each other; a parser that finds nothing is broken
    assert not broken, "links to missing files or headings:\n" + "\n".join(broken)


def test_mkdocs_nav_lists_existing_pages_and_every_page():
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", text, re.M)
    assert nav, "mkdocs.yml has no nav"
    missing = [p for p in nav if not (ROOT / "docs" / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - set(nav) == set(), f"pages not in mkdocs.yml nav: {sorted(pages - set(nav))}"


def test_readme_fits_on_a_screen_and_names_no_files_outside_the_repo():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "DESIGN.md" not in text and "shared/" not in text
