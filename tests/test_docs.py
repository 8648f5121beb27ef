"""Every ```python block in docs/*.md runs, so examples cannot drift from the code.

A block whose first line is ``# doctest: skip`` is shown but not run (it needs real
backends or names defined elsewhere); everything else must run standalone, offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            code = match.group(1)
            if code.lstrip().startswith("# doctest: skip"):
                continue
            found.append((f"{page.name}#{i}", code))
    return found


BLOCKS = _blocks()


def test_docs_have_runnable_examples():
    """The docs carry runnable examples at all (a broken regex would silently test nothing)."""
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_example_runs(where: str, code: str) -> None:
    """The example at this place in the docs runs without error."""
    exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_example_asserts_what_it_shows(where: str, code: str) -> None:
    """A runnable example checks its own result: one that only prints or defines can drift and still pass."""
    assert re.search(r"^\s*assert ", code, re.M), f"{where} asserts nothing"
