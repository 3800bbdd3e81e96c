"""The built manual holds every page of the toctree under its own title.

Sphinx writes its own pages (``search.html``, ``genindex.html``) into the same directory as ours; a page of
ours with one of those names is silently overwritten, and ``sphinx-build -W`` does not complain. This test
builds the manual and reads each page back.
"""

from __future__ import annotations

import html
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _toctree_pages() -> list[str]:
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    block = index.split(".. toctree::", 1)[1]
    pages = []
    for line in block.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith(":"):
            continue
        if not line.startswith(" "):
            break
        pages.append(entry)
    return pages


def _rst_title(page: str) -> str:
    lines = (DOCS / f"{page}.rst").read_text(encoding="utf-8").splitlines()
    for text, underline in itertools.pairwise(lines):
        if text.strip() and underline and set(underline) <= set("=-~^*#") and len(underline) >= len(text):
            return text.strip().replace("``", "")
    raise AssertionError(f"docs/{page}.rst has no title")


def _html_title(path: Path) -> str:
    match = re.search(r"<title>(.*?)</title>", path.read_text(encoding="utf-8"), re.S)
    assert match, f"{path.name} has no <title>"
    return html.unescape(match.group(1))


@pytest.fixture(scope="module")
def built_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs-html")
    doctrees = tmp_path_factory.mktemp("docs-doctrees")
    command = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html"]
    result = subprocess.run(
        [*command, "-d", str(doctrees), str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_toctree_lists_the_manual() -> None:
    pages = _toctree_pages()
    assert "fhir-search" in pages and "bulk-export" in pages, pages
    on_disk = {p.stem for p in DOCS.glob("*.rst")} - {"index"}
    assert on_disk == set(pages), f"pages not in the toctree: {on_disk - set(pages)}"


@pytest.mark.parametrize("reserved", ["search", "genindex", "py-modindex"])
def test_no_page_takes_a_name_sphinx_writes_itself(reserved: str) -> None:
    assert not (DOCS / f"{reserved}.rst").exists(), (
        f"docs/{reserved}.rst builds to {reserved}.html, which Sphinx overwrites with its own page: rename it"
    )


def test_every_page_is_built_under_its_own_title(built_html: Path) -> None:
    for page in _toctree_pages():
        built = built_html / f"{page}.html"
        assert built.is_file(), f"{page}.html was not built"
        title = _rst_title(page)
        assert _html_title(built).startswith(title), f"{page}.html does not hold '{title}': {_html_title(built)!r}"


def test_the_search_manual_is_found_by_the_search_index(built_html: Path) -> None:
    searchindex = (built_html / "searchindex.js").read_text(encoding="utf-8")
    assert '"fhir-search"' in searchindex
    assert "FHIR search extraction" in searchindex
