"""RecZero / RecOne rating prediction: the four-step prompt, its parser, rewards, metrics and baselines.

Letters: B prompts, G completions per prompt, H history items shown, N evaluated samples.

The model reads a user's last H rated items (title and rating, oldest first) and one target item, and
must answer in exactly four tagged blocks, in this order::

    <analyze user>...</analyze user><analyze item>...</analyze item><match>...</match><rate>4</rate>

Where we stand against the paper (Kong et al. 2025, "Think before Recommendation: Autonomous
Reasoning-enhanced Recommender", arXiv 2510.23077; no official code is public) and a public
reimplementation:

* Template: the paper's four steps and tag names; the wording of the system and user prompts is ours.
* Format: strict. Each of the eight tags appears exactly once, in order, every block is non-empty
  after stripping, and nothing but whitespace lies outside the blocks (text before the first tag,
  between blocks or after ``</rate>`` makes the completion invalid). The rate must be a plain decimal
  number (``4``, ``3.5``; not ``4/5``, ``four``, ``1e0``) within [low, high].
* Rewards: format +``format_reward`` / -``format_reward`` (default 0.5; the reimplementation used 1),
  answer ``1 - |y - y_hat| / max_error`` (default 4, the widest error on a 1-5 scale, so the answer term
  lies in [0, 1]; the reimplementation used 2, which lets it reach -1), and no answer term (0) when
  the format fails. The total is their sum, computed by ``rrec.grpo.reward_matrix`` over the two
  functions.
* Metrics: MAE and RMSE over all N samples, an unparseable completion being predicted as the global
  training mean (our rule; the paper does not state one), plus the same over parsed completions only
  and the parse rate; 95% intervals bootstrap *users* (``rrec.metrics.bootstrap_ci``).
* Baselines: the global training mean, each user's training mean (unseen user: the global mean) and
  the mean of the ratings shown in the sample's own history (empty: the global mean).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from rrec.metrics import bootstrap_ci

TAGS: tuple[str, ...] = ("analyze user", "analyze item", "match", "rate")

SYSTEM_PROMPT = (
    "You predict how a user will rate an item, on a scale from {low} to {high}. Think in four steps and "
    "answer in exactly this format, with nothing before or after it:\n"
    "<analyze user>the user's tastes, read from their past ratings</analyze user>\n"
    "<analyze item>what the target item is and who would enjoy it</analyze item>\n"
    "<match>how well the item fits this user</match>\n"
    "<rate>one number from {low} to {high}</rate>"
)

_BLOCKS = re.compile(r"\s*" + r"\s*".join(rf"<{t}>(.*?)</{t}>" for t in TAGS) + r"\s*", flags=re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def system_prompt(low: float = 1, high: float = 5) -> str:
    """The system turn stating the template and the scale."""
    return SYSTEM_PROMPT.format(low=f"{low:g}", high=f"{high:g}")


def user_prompt(history_titles: Sequence[str], history_ratings: Sequence[float], target_title: str) -> str:
    """The user turn: the rated history (oldest first) and the target item.

    Example:
        >>> print(user_prompt(["Heat (1995)"], [4.0], "Fargo (1996)"))
        The user's past ratings, oldest first:
        1. Heat (1995): 4
        Target item: Fargo (1996)
        How will the user rate the target item?
    """
    if len(history_titles) != len(history_ratings):
        raise ValueError(f"{len(history_titles)} titles for {len(history_ratings)} ratings")
    lines = [
        f"{i}. {t}: {r:g}" for i, (t, r) in enumerate(zip(history_titles, history_ratings, strict=True), 1)
    ]
    shown = "\n".join(lines) if lines else "(none)"
    return (
        f"The user's past ratings, oldest first:\n{shown}\nTarget item: {target_title}\n"
        "How will the user rate the target item?"
    )


def parse_rating(text: str, low: float = 1, high: float = 5) -> float | None:
    """The rating of a completion that follows the template, else None.

    Valid only if each of the eight tags appears exactly once, the four blocks come in order with only
    whitespace around them, each block is non-empty, and the rate is a plain number in [low, high].

    Example:
        >>> ok = "<analyze user>likes noir</analyze user><analyze item>a noir</analyze item>"
        >>> parse_rating(ok + "<match>good</match><rate> 4.5 </rate>")
        4.5
        >>> parse_rating(ok + "<match>good</match><rate>6</rate>") is None  # above the scale
        True
    """
    for tag in TAGS:
        if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
            return None
    m = _BLOCKS.fullmatch(text)
    if m is None or any(not block.strip() for block in m.groups()):
        return None
    rate = m.group(4).strip()
    if not _NUMBER.fullmatch(rate):
        return None
    value = float(rate)
    return value if low <= value <= high else None


RewardFunc = Callable[..., list[float]]


def make_rewards(
    *, format_reward: float = 0.5, max_error: float = 4.0, low: float = 1, high: float = 5
) -> list[RewardFunc]:
    """The two reward functions (TRL's shape), format then answer; the total reward is their sum.

    Args:
        format_reward: +this for a completion ``parse_rating`` accepts, -this otherwise.
        max_error: the error that brings the answer term to 0 (4 on a 1-5 scale).
        low, high: the rating scale.

    Returns:
        ``[format_fn, answer_fn]``; ``answer_fn`` needs the ``rating`` column (the truth, per completion).

    Example:
        >>> fmt, ans = make_rewards()
        >>> good = "<analyze user>a</analyze user><analyze item>b</analyze item>"
        >>> good += "<match>c</match><rate>2</rate>"
        >>> fmt([good, "4"]), ans([good, "4"], rating=[4.0, 4.0])  # 1 - |4 - 2| / 4 = 0.5; bad format: 0
        ([0.5, -0.5], [0.5, 0.0])
    """
    if max_error <= 0:
        raise ValueError(f"max_error must be > 0, got {max_error}")

    def format_fn(completions: list[str], **_) -> list[float]:
        ok = [parse_rating(c, low, high) is not None for c in completions]
        return [format_reward if k else -format_reward for k in ok]

    def answer_fn(completions: list[str], rating: Sequence[float], **_) -> list[float]:
        out = []
        for c, y in zip(completions, rating, strict=True):
            y_hat = parse_rating(c, low, high)
            out.append(0.0 if y_hat is None else 1.0 - abs(float(y) - y_hat) / max_error)
        return out

    format_fn.__name__, answer_fn.__name__ = "format_reward", "answer_reward"
    return [format_fn, answer_fn]


def _ci(values: torch.Tensor, users: list, n_resamples: int, seed: int) -> tuple[float, float]:
    return bootstrap_ci(values, users, n_resamples=n_resamples, seed=seed)


def rating_metrics(
    predictions: Sequence[float | None],
    truths: Sequence[float],
    users: Sequence,
    *,
    fallback: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float | None]:
    r"""MAE, RMSE and parse rate, with 95% user-bootstrap intervals.

    :math:`\mathrm{MAE} = \frac1N \sum_i |y_i - \hat y_i|`,
    :math:`\mathrm{RMSE} = \sqrt{\frac1N \sum_i (y_i - \hat y_i)^2}`. A None prediction (unparseable)
    counts as ``fallback`` (the global training mean) in ``mae`` / ``rmse``; ``parsed_mae`` /
    ``parsed_rmse`` use the parsed predictions only (None when there are none). The RMSE interval is
    the square root of the MSE interval's bounds.

    Returns:
        ``n``, ``parse_rate`` (+ ``_low`` / ``_high``), ``mae``, ``rmse``, ``parsed_n``,
        ``parsed_mae``, ``parsed_rmse``, each metric with ``_low`` / ``_high`` bounds.

    Example:
        Truths [4, 2], predictions [5, None], fallback 3: errors 1 and 1, MAE = RMSE = 1, parse rate
        0.5; parsed only: MAE = RMSE = 1 on one sample.
    """
    if not len(predictions) == len(truths) == len(users) or not predictions:
        raise ValueError(f"{len(predictions)} predictions, {len(truths)} truths, {len(users)} users")
    parsed = torch.tensor([p is not None for p in predictions], dtype=torch.float64)  # (N,)
    y_hat = torch.tensor([fallback if p is None else p for p in predictions], dtype=torch.float64)
    err = y_hat - torch.tensor([float(y) for y in truths], dtype=torch.float64)  # (N,)
    users = list(users)
    out: dict[str, float | None] = {"n": float(len(err))}

    def add(prefix: str, values: torch.Tensor, groups: list, sqrt: bool = False) -> None:
        lo, hi = _ci(values, groups, n_resamples, seed)
        f = math.sqrt if sqrt else float
        out[prefix], out[f"{prefix}_low"], out[f"{prefix}_high"] = f(values.mean()), f(lo), f(hi)

    add("parse_rate", parsed, users)
    add("mae", err.abs(), users)
    add("rmse", err**2, users, sqrt=True)
    keep = parsed.bool()
    out["parsed_n"] = float(keep.sum())
    kept_users = [u for u, k in zip(users, keep.tolist(), strict=True) if k]
    if kept_users:
        add("parsed_mae", err[keep].abs(), kept_users)
        add("parsed_rmse", err[keep] ** 2, kept_users, sqrt=True)
    else:
        for k in ("parsed_mae", "parsed_rmse"):
            out[k] = out[f"{k}_low"] = out[f"{k}_high"] = None
    return out


def global_mean(train: pd.DataFrame) -> float:
    """The mean target rating of the training samples."""
    return float(train["rating"].astype(float).mean())


def user_mean_predictions(train: pd.DataFrame, samples: pd.DataFrame) -> list[float]:
    """Each sample's user's mean training rating; a user absent from ``train`` gets the global mean.

    Example:
        Train ratings u: 4, 2; v: 5. Samples of u, w -> [3.0, 11/3] (w unseen: (4 + 2 + 5) / 3).
    """
    means = train.groupby("user_id")["rating"].mean().to_dict()
    fallback = global_mean(train)
    return [float(means.get(u, fallback)) for u in samples["user_id"]]


def history_mean_predictions(samples: pd.DataFrame, fallback: float) -> list[float]:
    """The mean of the ratings in each sample's own history (what the prompt shows); empty: fallback."""
    return [float(sum(h) / len(h)) if len(h) else fallback for h in samples["history_ratings"]]


def item_labels(items: pd.DataFrame) -> dict[str, str]:
    """item_id -> ``title (year)`` when the item table has a non-empty year, else the title."""
    ids, titles = items["item_id"].astype(str), items["title"].astype(str)
    if "year" not in items:
        return dict(zip(ids, titles, strict=True))
    year = items["year"].fillna("").astype(str).str.strip()
    shown = titles.where(year.isin(["", "nan"]), titles + " (" + year + ")")
    return dict(zip(ids, shown, strict=True))


def rating_view(samples: pd.DataFrame, items: pd.DataFrame, *, history: int = 10) -> pd.DataFrame:
    """The rating-prediction view of prepared samples: the last ``history`` rated items, with titles.

    Args:
        samples: ``rrec.data.build_samples`` rows (a prepared split); rows with a NaN rating and
            unrated history items are dropped.
        items: the item table (``item_id``, ``title``, optional ``year``).
        history: H, the most recent history items kept.

    Returns:
        Columns ``user_id``, ``history``, ``history_titles``, ``history_ratings``, ``target``,
        ``target_title``, ``rating``, ``timestamp``, in the order of ``samples``.
    """
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    labels = item_labels(items)
    rated = samples[samples["rating"].notna()]
    hist, hist_r = [], []
    for h, r in zip(rated["history"], rated["history_ratings"], strict=True):
        pairs = [(str(i), float(x)) for i, x in zip(h, r, strict=True) if x == x]  # x == x: not NaN
        pairs = pairs[-history:]
        hist.append([i for i, _ in pairs])
        hist_r.append([x for _, x in pairs])
    return pd.DataFrame(
        {
            "user_id": rated["user_id"].astype(str).tolist(),
            "history": hist,
            "history_titles": [[labels.get(i, i) for i in h] for h in hist],
            "history_ratings": hist_r,
            "target": rated["target"].astype(str).tolist(),
            "target_title": [labels.get(str(t), str(t)) for t in rated["target"]],
            "rating": rated["rating"].astype(float).tolist(),
            "timestamp": rated["timestamp"].astype(float).tolist(),
        }
    )


def load_amazon2023_rating(
    reviews_path: str | Path,
    meta_path: str | Path,
    *,
    max_history: int = 20,
    min_items: int = 10_000,
    window_months_start: int = 12,
    kcore: int | None = None,
):
    """An Amazon Reviews 2023 category as a :class:`rrec.data.PreparedData` of rated samples.

    ``rrec.data.load_amazon2023`` (R²ec's window; a small file simply keeps all its reviews), then
    ``rrec.data.rating_samples`` and the global 80/10/10 temporal split; pass the splits to
    :func:`rating_view`. The name is the reviews file's stem.
    """
    from rrec.data import PreparedData, load_amazon2023, rating_samples, temporal_split

    items, inter = load_amazon2023(
        reviews_path, meta_path, min_items=min_items, window_months_start=window_months_start, kcore=kcore
    )
    samples = rating_samples(inter, max_history=max_history)
    name = Path(reviews_path).name.split(".")[0]
    return PreparedData(name=name, items=items, splits=temporal_split(samples))
