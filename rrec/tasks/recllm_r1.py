r"""RecLLM-R1: a history of movie titles -> reasoning -> a list of K recommended titles, rewarded for
accuracy, diversity and novelty. Prompts, rewards (TRL's shape) and metrics; the two-stage loop (SFT,
then GRPO) is ``recipes/recllm_r1.py``; parsing and title matching are ``rrec.tasks.title_match``.

Letters: B samples, G completions per sample, K list length, N catalog items.

Completion format asked for (and checked by the format reward)::

    <reasoning>...</reasoning>
    <answer>
    1. Title (Year)
    ...
    K. Title (Year)
    </answer>

Definitions, for a mapped list L = (l_1, ..., l_n) of distinct catalog items (n <= K; rules for parsing,
matching, repeats and unknown titles in ``title_match``) and the sample's target t:

.. math::

    \mathrm{NDCG@K} = \frac{\mathbb{1}[t = l_r,\ r \le K]}{\log_2(r + 1)}, \qquad
    \mathrm{ILD} = 1 - \binom{n}{2}^{-1} \sum_{i<j} \frac{|g_i \cap g_j|}{|g_i \cup g_j|}, \qquad
    \mathrm{Nov} = \frac{1}{n} \sum_i \frac{-\log_2 p(l_i)}{\max_{j \in \mathcal{I}} -\log_2 p(j)}

with :math:`g_i` the genre set of item i (two empty sets have Jaccard similarity 1) and
:math:`p(i) = (c_i + 1) / (C + N)` the add-one-smoothed share of item i among the C training targets
(``c_i`` its count), so that an item never seen in training has a finite self-information, the
catalog's largest. ILD is 0 for lists with fewer than 2 items (no list, no diversity: a one-title answer
must not score as maximally diverse); novelty is 0 for an empty list. Recall@K = 1[t in L[:K]].

Where we depart from the paper (RecLLM-R1, Xie et al. 2025), whose code is not public: the reward is the
weighted sum w_acc NDCG@K + w_div ILD + w_nov Nov + w_format 1[well formed]; the paper describes an
accuracy/diversity/novelty reward but we know no published weights or exact definitions, so the
definitions above and the default weights (1, 0.2, 0.2, 0.1, recipe config) are ours. The format term is
our addition: SmolLM2-135M-Instruct, asked for the tags, writes a bare numbered list (measured on 16 test
users: no tags at all), and only this term rewards the requested format. Without an ``<answer>`` tag the
numbered lines are read as the list (``strict_answer=False``, the default; ``title_match``). The SFT stage
answers the same list prompt as GRPO with a one-line list, "1. Title (Year)" of the next item (no
reasoning: we have no reasoning traces to imitate). An earlier version asked a separate "which movie
next?" question with the bare title as target: after 80 SFT steps SmolLM2 answered the list prompt with
one invented bare title, no line of which the list parser reads, so every GRPO reward was 0
(docs/results.md). History items in the list are kept: they take a slot and cannot be the target. Not
validated beyond unit tests and short CPU runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import pandas as pd
import torch

from rrec.grpo import RewardFunc
from rrec.metrics import bootstrap_ci, ndcg_of_rank
from rrec.tasks.title_match import TitleIndex, display_title, is_well_formed

SYSTEM = "You are a movie recommender. You only recommend real movies from the MovieLens catalog."


@dataclass
class Catalog:
    """What the prompts, rewards and metrics need to know about the items.

    Attributes:
        index: title lines -> item ids.
        titles: item id -> "Title (Year)".
        genres: item id -> genre set.
        novelty: item id -> self-information normalised to [0, 1] (module docstring).
        popular: item ids by training popularity, most popular first (ties: catalog order).
        strict_answer: titles only from an ``<answer>`` block (``title_match.parse_titles``).
    """

    index: TitleIndex
    titles: dict[str, str]
    genres: dict[str, frozenset[str]]
    novelty: dict[str, float]
    popular: list[str]
    strict_answer: bool = False

    def mapped(self, completion: str, k: int) -> list[str]:
        """The distinct catalog items a completion lists, cut at K."""
        return self.index.map_completion(completion, k, self.strict_answer).items


def build_catalog(
    items: pd.DataFrame, train: pd.DataFrame, fuzzy_cutoff: float = 0.85, strict_answer: bool = False
) -> Catalog:
    """The :class:`Catalog` of an items table (``item_id``, ``title``, ``year``, ``genres`` as
    comma-separated text) and the training samples (their ``target`` counts give the popularity)."""
    ids = items["item_id"].astype(str).tolist()
    years = items["year"] if "year" in items else [None] * len(items)
    titles = {i: display_title(t, y) for i, t, y in zip(ids, items["title"], years, strict=True)}
    raw = items["genres"] if "genres" in items else [""] * len(items)
    genres = {
        i: frozenset(g.strip() for g in str(s).split(",") if g.strip()) if isinstance(s, str) else frozenset()
        for i, s in zip(ids, raw, strict=True)
    }
    counts = train["target"].astype(str).value_counts()
    c = [int(counts.get(i, 0)) for i in ids]
    total = sum(c) + len(ids)
    info = [-math.log2((ci + 1) / total) for ci in c]
    top = max(info) if info else 1.0
    novelty = {i: (v / top if top > 0 else 0.0) for i, v in zip(ids, info, strict=True)}
    popular = [ids[j] for j in sorted(range(len(ids)), key=lambda j: -c[j])]  # stable: catalog order
    return Catalog(TitleIndex(items, fuzzy_cutoff), titles, genres, novelty, popular, strict_answer)


def history_titles(cat: Catalog, history: Sequence, max_history: int) -> list[str]:
    """The most recent ``max_history`` history items as "Title (Year)", oldest first."""
    recent = list(history)[-max_history:] if max_history > 0 else []
    return [cat.titles.get(str(i), str(i)) for i in recent]


def _numbered(titles: Sequence[str]) -> str:
    return "\n".join(f"{n}. {t}" for n, t in enumerate(titles, 1))


def sft_target(cat: Catalog, target) -> str:
    """The SFT answer to the list prompt: a one-line numbered list, the next item's "1. Title (Year)"."""
    return f"1. {cat.titles[str(target)]}"


def grpo_prompt(titles: Sequence[str], k: int) -> str:
    """GRPO / evaluation user turn: the history -> short reasoning, then K numbered titles."""
    return (
        "A user watched these movies, in order (most recent last):\n"
        f"{_numbered(titles)}\n\n"
        f"Recommend {k} other movies the user is likely to watch next. First reason briefly inside "
        f"<reasoning></reasoning>, then list exactly {k} titles with their years inside <answer></answer>, "
        "one per line, numbered:\n"
        "<reasoning>...</reasoning>\n<answer>\n1. Title (Year)\n2. Title (Year)\n...\n</answer>"
    )


def list_ndcg(items: Sequence[str], target, k: int) -> float:
    """NDCG@K of the target in a mapped list (0 when absent or beyond K).

    Example:
        >>> list_ndcg(["5", "9", "2"], "9", 10)  # rank 2: 1 / log2(3)
        0.6309297535714575
    """
    t = str(target)
    return next((ndcg_of_rank(r, k) for r, i in enumerate(items[:k], 1) if i == t), 0.0)


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def intra_list_diversity(items: Sequence[str], genres: Mapping[str, frozenset]) -> float:
    """1 - mean pairwise genre Jaccard similarity; 0 for fewer than 2 items.

    Example:
        >>> g = {"a": frozenset({"Comedy"}), "b": frozenset({"Comedy", "Drama"}), "c": frozenset({"War"})}
        >>> intra_list_diversity(["a", "b", "c"], g)  # 1 - (1/2 + 0 + 0) / 3
        0.8333333333333334
    """
    if len(items) < 2:
        return 0.0
    sims = [jaccard(genres[a], genres[b]) for a, b in combinations(items, 2)]
    return 1.0 - sum(sims) / len(sims)


def list_novelty(items: Sequence[str], novelty: Mapping[str, float]) -> float:
    """Mean normalised self-information of the items; 0 for an empty list.

    Example:
        >>> list_novelty(["a", "b"], {"a": 1 / 3, "b": 1.0})  # (1/3 + 1) / 2
        0.6666666666666666
    """
    return sum(novelty[i] for i in items) / len(items) if items else 0.0


def make_rewards(
    cat: Catalog, k: int, *, w_acc: float = 1.0, w_div: float = 0.2, w_nov: float = 0.2, w_format: float = 0.1
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions (TRL's shape) and their weights; the reward is ``reward_matrix(...) @ weights``.

    Functions, in order: ``accuracy`` (NDCG@K of the ``target`` column), ``diversity`` (ILD),
    ``novelty``, ``format`` (1 if :func:`~rrec.tasks.title_match.is_well_formed`). A zero weight keeps
    its function (its mean is still logged).

    Example:
        >>> items = pd.DataFrame({"item_id": ["6"], "title": ["Heat"], "year": ["1995"], "genres": ["War"]})
        >>> funcs, w = make_rewards(build_catalog(items, pd.DataFrame({"target": ["6"]})), 10)
        >>> text = "<reasoning>r</reasoning><answer>\\n1. Heat (1995)\\n</answer>"
        >>> [f([text], target=["6"])[0] for f in funcs]  # NDCG 1; one item: ILD 0; p = 1: novelty 0
        [1.0, 0.0, 0.0, 1.0]
    """

    def accuracy(completions: list[str], target: Sequence, **_) -> list[float]:
        return [list_ndcg(cat.mapped(c, k), t, k) for c, t in zip(completions, target, strict=True)]

    def diversity(completions: list[str], **_) -> list[float]:
        return [intra_list_diversity(cat.mapped(c, k), cat.genres) for c in completions]

    def novelty(completions: list[str], **_) -> list[float]:
        return [list_novelty(cat.mapped(c, k), cat.novelty) for c in completions]

    def format_ok(completions: list[str], **_) -> list[float]:
        return [float(is_well_formed(c)) for c in completions]

    format_ok.__name__ = "format"
    return [accuracy, diversity, novelty, format_ok], [w_acc, w_div, w_nov, w_format]


REWARD_NAMES = ("accuracy", "diversity", "novelty", "format")


def score_list(cat: Catalog, items: Sequence[str], target, k: int = 10) -> dict[str, float]:
    """Recall@K, NDCG@K, ILD and novelty of one mapped list (its first K items)."""
    top = list(items)[:k]
    return {
        f"recall@{k}": float(str(target) in top),
        f"ndcg@{k}": list_ndcg(top, target, k),
        "diversity": intra_list_diversity(top, cat.genres),
        "novelty": list_novelty(top, cat.novelty),
    }


def score_completions(
    cat: Catalog, completions: Sequence[str], samples: pd.DataFrame, k: int = 10
) -> list[dict]:
    """One row per sample: its mapped list, the list metrics, valid-title rate and format flag.

    Valid-title rate: distinct catalog items reached / title lines listed (unknown and repeated titles
    count against it; 0 when no title is listed).
    """
    rows = []
    for text, (_, s) in zip(completions, samples.iterrows(), strict=True):
        m = cat.index.map_completion(text, k, cat.strict_answer)
        valid = m.n_titles - m.n_unknown - m.n_duplicates
        rows.append({
            "user_id": str(s["user_id"]), "target": str(s["target"]), "items": m.items,
            **score_list(cat, m.items, s["target"], k),
            "valid_title_rate": valid / m.n_titles if m.n_titles else 0.0,
            "n_titles": m.n_titles, "well_formed": float(is_well_formed(text)), "completion": text,
        })  # fmt: skip
    return rows


def popular_lists(cat: Catalog, histories: Sequence[Sequence], k: int = 10) -> list[list[str]]:
    """The most-popular baseline: the K most popular training items outside each history."""
    out = []
    for h in histories:
        seen = {str(i) for i in h}
        top: list[str] = []
        for i in cat.popular:
            if i not in seen:
                top.append(i)
                if len(top) == k:
                    break
        out.append(top)
    return out


def score_lists(
    cat: Catalog, lists: Sequence[Sequence[str]], samples: pd.DataFrame, k: int = 10
) -> list[dict]:
    """:func:`score_completions`'s rows for item lists given directly (baselines: every title valid)."""
    rows = []
    for items, (_, s) in zip(lists, samples.iterrows(), strict=True):
        rows.append({
            "user_id": str(s["user_id"]), "target": str(s["target"]), "items": list(items),
            **score_list(cat, items, s["target"], k), "valid_title_rate": 1.0, "n_titles": len(items),
            "well_formed": 1.0,
        })  # fmt: skip
    return rows


def summarise(rows: Sequence[dict], k: int = 10, seed: int = 0) -> dict:
    """Means over samples; Recall@K and NDCG@K with 95% bootstrap intervals over users."""
    if not rows:
        raise ValueError("no rows to summarise")
    users = [r["user_id"] for r in rows]
    out: dict = {"samples": len(rows), "users": len(set(users))}
    for name in (f"recall@{k}", f"ndcg@{k}"):
        v = torch.tensor([r[name] for r in rows], dtype=torch.float64)
        out[name] = float(v.mean())
        out[f"{name}_ci95"] = list(bootstrap_ci(v, users, seed=seed))
    for name in ("diversity", "novelty", "valid_title_rate", "well_formed"):
        out[name] = sum(r[name] for r in rows) / len(rows)
    return out
