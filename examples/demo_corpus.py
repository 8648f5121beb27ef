"""The demo's corpus: paragraphs of Python's own reference documentation.

Why this text: it ships with every CPython (``pydoc_data.topics``, the pages ``help()``
shows), so the demo needs no download, and its paragraphs range from one line to whole
grammar listings, which is exactly the length spread that token-aware batching is for.
"""

from __future__ import annotations

import re

__all__ = ["paragraphs"]

_BLANK_LINE = re.compile(r"\n\s*\n")


def paragraphs(limit: int | None = None, *, min_chars: int = 40) -> list[str]:
    """Distinct paragraphs of at least ``min_chars`` characters, whitespace collapsed, in
    a fixed order (topics sorted by name), at most ``limit`` of them."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for name in sorted(topics):
        for block in _BLANK_LINE.split(topics[name]):
            text = " ".join(block.split())
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(text)
                if limit is not None and len(out) >= limit:
                    return out
    return out


if __name__ == "__main__":
    corpus = paragraphs()
    lengths = sorted(len(t) for t in corpus)
    print(f"{len(corpus)} paragraphs, median {lengths[len(lengths) // 2]} chars, max {lengths[-1]}")
