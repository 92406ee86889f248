"""Title and HTML cleaning, with expected strings written out by hand."""

from __future__ import annotations

import pytest

from rrec.data import clean_html, move_trailing_article


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Kite &amp; String", "Kite & String"),
        ("Puzzle <i>1000</i> pieces", "Puzzle 1000 pieces"),
        ("<br/>", ""),
        ("   ", ""),
        # An Amazon title that is only the start of a tag, with no closing '>'.
        ('<span class="a-size-medium a-color-secondary a-text-normal', ""),
        # &lrm; is an invisible left-to-right mark: dropped; &ndash; is a visible dash: kept.
        ("Elton John &lrm;&ndash; Honky Ch&acirc;teau", "Elton John – Honky Château"),
        ("a\n\tb", "a b"),
        ("3 < 4", "3 < 4"),
    ],
)
def test_clean_html(raw, expected):
    assert clean_html(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Usual Suspects, The", "The Usual Suspects"),
        ("Bug's Life, A", "A Bug's Life"),
        ("Affair to Remember, An", "An Affair to Remember"),
        ("Enfer, L'", "L'Enfer"),
        ("Postino, Il", "Il Postino"),
        ("Mariachi, El", "El Mariachi"),
        # The article of the main title and of the parenthesised original title both move.
        ("Seventh Seal, The (Sjunde inseglet, Det)", "The Seventh Seal (Det Sjunde inseglet)"),
        ("Midaq Alley (Callejón de los milagros, El)", "Midaq Alley (El Callejón de los milagros)"),
        # An article inside the title stays; a trailing word that is not an article stays.
        ("Good, The Bad and The Ugly, The", "The Good, The Bad and The Ugly"),
        ("Paris, Texas", "Paris, Texas"),
        ("Corrina, Corrina", "Corrina, Corrina"),
        ("Toy Story", "Toy Story"),
    ],
)
def test_move_trailing_article(raw, expected):
    assert move_trailing_article(raw) == expected
