"""rrec: reasoning recommenders (a decoder LLM that reasons, then recommends with an item head).

Importing ``rrec`` is cheap and has no side effects; the model class loads on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ReasoningRecommender", "Recommendation", "__version__"]


def __getattr__(name: str):
    if name in ("ReasoningRecommender", "Recommendation"):
        from rrec import model

        return getattr(model, name)
    raise AttributeError(f"module 'rrec' has no attribute {name!r}")
