"""Markdown sections of BENCHMARKS.md: one per benchmark, replaced in place by a rerun."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str) -> None:
    """Replace the section with the same heading in ``path``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = section.splitlines()[0]
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
