"""docs/integrations.md quotes the example files; the quotes must not drift from them."""

from __future__ import annotations

import re

import pytest
from tests.integrations.conftest import ROOT

PAGE = ROOT / "docs" / "integrations.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SOURCE = re.compile(r"^# doctest: skip\n# (examples/\S+\.py)\n")


def _quotes() -> list[tuple[str, str]]:
    quotes = []
    for match in BLOCK.finditer(PAGE.read_text()):
        source = SOURCE.match(match.group(1))
        if source:
            quotes.append((source.group(1), match.group(1)[source.end() :]))
    return quotes


QUOTES = _quotes()


def test_every_example_is_quoted() -> None:
    """The page quotes each of the three examples (a broken pattern would check nothing)."""
    quoted = {path.split("/")[1] for path, _ in QUOTES}
    assert quoted == {"flask_app.py", "django_app", "fastapi_app.py"}


@pytest.mark.parametrize(
    ("path", "code"), QUOTES, ids=[f"{p}#{i}" for i, (p, _) in enumerate(QUOTES)]
)
def test_quote_is_verbatim(path: str, code: str) -> None:
    """The quoted lines appear, unchanged and contiguous, in the file the quote names."""
    assert code in (ROOT / path).read_text()
