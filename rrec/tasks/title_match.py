"""From a generated completion to catalog items: the answer block, its title lines, and title matching.

Used by RecLLM-R1 (``rrec.tasks.recllm_r1``), whose completions end with a numbered list of titles::

    <reasoning>...</reasoning>
    <answer>
    1. Title (Year)
    2. Title (Year)
    </answer>

Rules, each stated once here:

* Answer block: the text between the first ``<answer>`` and the next ``</answer>``, or the end of the
  completion when ``</answer>`` is missing (a completion cut at the token budget still lists titles). No
  ``<answer>``: with ``strict``, no titles; otherwise (the default) the numbered lines (``1.``, ``2)``) of
  the whole completion, because SmolLM2-135M-Instruct, asked for the tags, answers with a bare numbered
  list: with no titles at all every reward but the format term would be 0 and GRPO would get no signal
  from accuracy until the tags are learnt. Text outside the block is ignored by the parser (the format
  check sees it).
* Title lines: every non-blank line of the block, its list markers (``1.``, ``2)``, ``-``, ``*``) and
  markdown emphasis/quotes stripped; when a line holds a ``(YYYY)`` year, whatever follows the year is
  dropped ("Heat (1995) - a heist film" -> "Heat (1995)").
* Normalised title: accents dropped (NFKD), MovieLens's trailing article moved to the front
  (``rrec.data.text.move_trailing_article``: "Usual Suspects, The" = "The Usual Suspects"), lower case,
  apostrophes deleted, "&" read as "and", other punctuation replaced by spaces, whitespace collapsed.
  Every catalog item is keyed by its normalised title and by the title without its parenthesised
  alternative ("Shanghai Triad (Yao a yao ...)" is also "shanghai triad").
* Matching: exact key first, then the closest key by ``difflib.get_close_matches`` with ratio >=
  ``fuzzy_cutoff`` (default 0.85, our choice: near misses such as "Twelve Monkey" (ratio 0.96) or "The
  Shawshank Redemtion" (0.98) match; different films such as "Heat" / "Heavy" or "Star Wars" / "Star
  Trek" (0.67) do not); 0 < cutoff <= 1, 1 disables the fuzzy step. A fuzzy match must carry the same
  number words (digits, roman numerals II-X) as the line, so that a sequel does not match its original
  ("Toy Story 2" is not "Toy Story", ratio 0.9); the closest of the 3 best keys passing that test wins.
  Among items sharing a key (ML-100K lists 22 titles twice, e.g. two "Sabrina"), the one whose year
  equals the written year, else the first in catalog order (the same film listed twice under two ids,
  as ML-100K's two "Chasing Amy (1997)", always maps to the first id: a target that is the second id
  cannot be hit by its title).
* Duplicates: an item reached a second time (the same title repeated, or two spellings of one film) keeps
  its first position; the repeat is dropped. Unknown titles are dropped. The list is cut at K items
  after both rules.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd

from rrec.data.text import move_trailing_article

_YEAR_END = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)")
_NUMBERED = re.compile(r"^\s*\d{1,3}[.)]\s*\S")
_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022]+)\s*")  # not "2001:" (A Space Odyssey)
_PAREN = re.compile(r"\([^()]*\)")
_APOSTROPHE = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
_ROMAN = frozenset({"ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x"})
_WELL_FORMED = re.compile(r"^\s*<reasoning>.*?</reasoning>\s*<answer>(?P<body>.*?)</answer>\s*$", re.DOTALL)


def normalise_title(title: str) -> str:
    """The matching key of a title (rules in the module docstring).

    Example:
        >>> normalise_title("Usual Suspects, The")
        'the usual suspects'
        >>> normalise_title("  Schindler's  List ")
        'schindlers list'
        >>> normalise_title("Amélie & Co.")
        'amelie and co'
    """
    text = unicodedata.normalize("NFKD", title)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = move_trailing_article(_SPACE.sub(" ", text).strip())
    text = _APOSTROPHE.sub("", text.lower()).replace("&", " and ")
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()


def split_year(line: str) -> tuple[str, str | None]:
    """(title, year) of a title line; text after a ``(YYYY)`` year is dropped; no year: None.

    Example:
        >>> split_year("Heat (1995) - a heist film")
        ('Heat', '1995')
        >>> split_year("Heat")
        ('Heat', None)
    """
    m = _YEAR_END.match(line.strip())
    if m is None:
        return line.strip(), None
    return m["title"].strip(), m["year"]


def display_title(title: str, year: object = None) -> str:
    """ "Title (Year)" as prompts and SFT targets write an item; the year left out when missing."""
    y = "" if year is None or (isinstance(year, float) and year != year) else str(year).strip()
    return f"{title} ({y})" if y else str(title)


def answer_block(completion: str) -> str | None:
    """The answer block's text, or None when the completion has no ``<answer>`` tag."""
    start = completion.find("<answer>")
    if start < 0:
        return None
    body = completion[start + len("<answer>") :]
    end = body.find("</answer>")
    return body if end < 0 else body[:end]


def parse_titles(completion: str, strict: bool = False) -> list[str]:
    """The title lines of a completion's answer block, in order; no block: ``[]`` when ``strict``, else
    the numbered lines of the whole completion.

    Example:
        >>> parse_titles("<reasoning>x</reasoning><answer>\\n1. Heat (1995)\\n2. **Fargo**\\n</answer>")
        ['Heat (1995)', 'Fargo']
        >>> parse_titles("Try these:\\n1. Heat (1995)\\n- Fargo"), parse_titles("1. Heat", strict=True)
        (['Heat (1995)'], [])
    """
    body = answer_block(completion)
    if body is None and strict:
        return []
    if body is None:
        lines = [line for line in completion.splitlines() if _NUMBERED.match(line)]
    else:
        lines = body.splitlines()
    out = []
    for line in lines:
        line = _MARKER.sub("", _MARKER.sub("", line))  # "1. - Title": a number and a bullet
        line = line.strip().strip("*_\"'").strip()
        if not line:
            continue
        title, year = split_year(line)
        out.append(display_title(title.strip("*_\"'").strip(), year))
    return out


def is_well_formed(completion: str) -> bool:
    """True for ``<reasoning>...</reasoning> <answer>...</answer>`` with nothing around them and at least
    one title line in the answer.

    Example:
        >>> is_well_formed("<reasoning>r</reasoning>\\n<answer>\\n1. Heat (1995)\\n</answer>")
        True
        >>> is_well_formed("<answer>\\n1. Heat (1995)\\n</answer>")  # no reasoning block
        False
    """
    m = _WELL_FORMED.match(completion)
    return m is not None and "<answer>" not in m["body"] and bool(parse_titles(completion))


def _number_words(key: str) -> frozenset[str]:
    return frozenset(w for w in key.split() if w.isdigit() or w in _ROMAN)


class MappedList(NamedTuple):
    items: list[str]  # distinct catalog item ids in listed order, cut at K
    n_titles: int  # title lines listed (before mapping, duplicates and cut)
    n_unknown: int  # lines that matched no catalog item
    n_duplicates: int  # lines that matched an item already listed


class TitleIndex:
    """Catalog titles -> item ids, exact then fuzzy (rules in the module docstring).

    Args:
        items: the catalog with ``item_id``, ``title`` and, optionally, ``year``.
        fuzzy_cutoff: the least ``difflib`` ratio for a fuzzy match; 1 disables fuzzy matching.
    """

    def __init__(self, items: pd.DataFrame, fuzzy_cutoff: float = 0.85):
        if not 0 < fuzzy_cutoff <= 1:
            raise ValueError(f"fuzzy_cutoff must be in (0, 1], got {fuzzy_cutoff}")
        self.fuzzy_cutoff = fuzzy_cutoff
        self._by_key: dict[str, list[tuple[str, str | None]]] = {}  # key -> [(item_id, year)]
        years = items["year"] if "year" in items else [None] * len(items)
        for item_id, title, year in zip(items["item_id"].astype(str), items["title"], years, strict=True):
            y = None if year is None or (isinstance(year, float) and year != year) else str(year).strip()
            keys = {normalise_title(str(title)), normalise_title(_PAREN.sub(" ", str(title)))}
            for key in keys - {""}:
                self._by_key.setdefault(key, []).append((item_id, y or None))
        self._keys = list(self._by_key)
        self._fuzzy: dict[str, str | None] = {}  # cache: key -> matched key

    def _match_key(self, key: str) -> str | None:
        if key in self._by_key:
            return key
        if self.fuzzy_cutoff >= 1:
            return None
        if key not in self._fuzzy:
            close = difflib.get_close_matches(key, self._keys, n=3, cutoff=self.fuzzy_cutoff)
            nums = _number_words(key)
            self._fuzzy[key] = next((c for c in close if _number_words(c) == nums), None)
        return self._fuzzy[key]

    def lookup(self, line: str) -> str | None:
        """The item id of one title line ("Title" or "Title (Year)"), or None.

        Example:
            >>> items = pd.DataFrame({"item_id": ["7"], "title": ["Twelve Monkeys"], "year": ["1995"]})
            >>> idx = TitleIndex(items)
            >>> idx.lookup("12 Monkeys (1995)"), idx.lookup("Twelve Monkey"), idx.lookup("Heat")
            (None, '7', None)
        """
        title, year = split_year(line)
        key = self._match_key(normalise_title(title))
        if key is None:
            return None
        cands = self._by_key[key]
        return next((i for i, y in cands if year is not None and y == year), cands[0][0])

    def map_titles(self, lines: Sequence[str], k: int) -> MappedList:
        """Title lines -> distinct item ids, unknown and repeated items dropped, cut at ``k``."""
        items: list[str] = []
        seen: set[str] = set()
        unknown = dup = 0
        for line in lines:
            item = self.lookup(line)
            if item is None:
                unknown += 1
            elif item in seen:
                dup += 1
            else:
                seen.add(item)
                items.append(item)
        return MappedList(items[:k], len(lines), unknown, dup)

    def map_completion(self, completion: str, k: int, strict: bool = False) -> MappedList:
        """``map_titles(parse_titles(completion, strict), k)``."""
        return self.map_titles(parse_titles(completion, strict), k)
