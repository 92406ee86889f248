"""Cleaning of item text: HTML in Amazon titles and descriptions, articles in MovieLens titles.

Both are pure string-to-string functions so that every loader applies the same rule.
"""

from __future__ import annotations

import html
import re
import unicodedata

# A tag, or a tag cut off at the end of the string (Amazon has titles such as
# '<span class="a-size-medium a-color-secondary a-text-normal' with no closing '>').
_TAG = re.compile(r"<\s*/?\s*[A-Za-z!][^<>]*(?:>|$)")
_SPACE = re.compile(r"\s+")

# Articles that MovieLens moves to the end of a title ("Usual Suspects, The"). Measured on the titles
# of ML-100K and ML-1M: English The/A/An, French La/Le/Les/L', Italian Il/I, German Der/Die/Das,
# Spanish El, Portuguese O, Swedish Det. Other trailing ", Word" endings are not articles
# ("Paris, Texas", "Alice in Wonderland"-style names, "Corrina, Corrina") and are left alone.
MOVIELENS_ARTICLES: tuple[str, ...] = (
    "The",
    "A",
    "An",
    "La",
    "Le",
    "Les",
    "L'",
    "Il",
    "I",
    "Der",
    "Die",
    "Das",
    "El",
    "O",
    "Det",
)
_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+), (?P<article>" + "|".join(re.escape(a) for a in MOVIELENS_ARTICLES) + r")$"
)


def clean_html(text: str) -> str:
    """Unescape HTML entities, drop tags and invisible format characters, and collapse whitespace.

    Args:
        text: raw text, possibly with entities (``&eacute;``) and tags (``<br/>``).

    Returns:
        The visible text on one line, stripped; ``""`` when nothing visible is left.

    Example:
        >>> clean_html("Folie &agrave; Deux<br/> ")
        'Folie à Deux'
        >>> clean_html('<span class="a-size-medium a-text-normal')
        ''
    """
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    # Entities such as &lrm; unescape to invisible direction marks (Unicode category Cf).
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _SPACE.sub(" ", text).strip()


def _front_article(part: str) -> str:
    match = _TRAILING_ARTICLE.match(part.strip())
    if match is None:
        return part.strip()
    article, body = match["article"], match["body"]
    return f"{article}{body}" if article.endswith("'") else f"{article} {body}"


def move_trailing_article(title: str) -> str:
    """Rewrite MovieLens's "Usual Suspects, The" as "The Usual Suspects".

    The rule is applied to the main title and to each parenthesised alternative title, so
    "Seventh Seal, The (Sjunde inseglet, Det)" becomes "The Seventh Seal (Det Sjunde inseglet)".
    Only the articles in ``MOVIELENS_ARTICLES`` are moved; "Paris, Texas" is unchanged.

    Args:
        title: a MovieLens title without its "(year)" suffix.

    Returns:
        The title with its articles in front.

    Example:
        >>> move_trailing_article("Usual Suspects, The")
        'The Usual Suspects'
        >>> move_trailing_article("Tin Drum, The (Blechtrommel, Die)")
        'The Tin Drum (Die Blechtrommel)'
        >>> move_trailing_article("Enfer, L'")
        "L'Enfer"
    """
    parts = re.split(r"(\([^()]*\))", title)
    out = []
    for part in parts:
        if part.startswith("(") and part.endswith(")"):
            out.append(f"({_front_article(part[1:-1])})")
        elif part.strip():
            out.append(_front_article(part))
    return " ".join(out)
