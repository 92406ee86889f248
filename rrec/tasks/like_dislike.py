"""Like/dislike prediction by GRPO: the prompts, the sample view, the answer parser, rewards and metrics.

Letters: B prompts, G completions per prompt, H history items shown, N evaluated samples.

The model reads a user's last H rated movies (titles, each marked Liked or Disliked, oldest first) and
one target movie, and must think, then answer Yes or No, in two tagged blocks::

    <reasoning>
    ...
    </reasoning>
    <answer>
    Yes
    </answer>

Where we stand against the literature (TALLRec, Bao et al. 2023, and CoLLM, Zhang et al. 2023, both
train by supervised fine-tuning on this task and report AUC; there is no paper for the GRPO variant):

* Task: TALLRec's view. The last H = 10 rated items, like = rating >= 4 (CoLLM's convention on
  MovieLens; ``like_threshold`` changes it); the wording of the prompts is ours. Items are shown as
  "Title (Year)" as the catalog stores them (MovieLens's "Usual Suspects, The" is left as is).
* Samples come from the prepared splits (``rrec.data.prepared``: R²ec's global temporal split with 20
  history items), cut to H rated items here, so the held-out samples are those of every other system.
* Parser: the answer is the content of the single ``<answer>...</answer>`` block, stripped of
  whitespace: "yes" or "like" -> True, "no" or "dislike" -> False (any case); anything else, a missing
  block or two answer blocks -> None. Nothing else of the completion matters to the parser.
* Rewards (TRL's shape, each 1.0 or 0.0; the weighted sum is the GRPO reward): correctness (the parsed
  answer equals the label; None never does), strict format (the whole completion is exactly the
  template above, each tag once, blocks non-blank, only whitespace before and after) and soft format
  (a reasoning block, then later an answer block, anything around or between). The weights 2.0 / 0.5
  / 0.5 follow the widely copied GSM8K "reasoning/answer" GRPO demo for TRL's GRPOTrainer; its integer
  and XML-count rewards are left out. The regular expressions are ours: the demo's soft pattern does
  not let ``.`` cross lines, so a multi-line reasoning never matched it.
* Metric: accuracy of the greedy answer (unparseable = wrong) rather than the papers' AUC (a generated
  Yes/No has no score to rank by), with the parse rate, the Yes rate and the label's Yes rate (the
  always-Yes accuracy); 95% intervals bootstrap *users* (``rrec.metrics.bootstrap_ci``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from rrec.metrics import bootstrap_ci

RewardFunc = Callable[..., list[float]]

SYSTEM_PROMPT = (
    "You predict whether a user will like a movie, from the movies they liked and disliked before. "
    "First think about the user's tastes and the movie, then answer Yes or No, in exactly this format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\nYes or No\n</answer>"
)

TAGS: tuple[str, ...] = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
YES: frozenset[str] = frozenset({"yes", "like"})
NO: frozenset[str] = frozenset({"no", "dislike"})

_ANSWER = re.compile(r"<answer>(.*?)</answer>", flags=re.DOTALL)
_STRICT = re.compile(r"\s*<reasoning>\n(.+?)\n</reasoning>\n<answer>\n(.+?)\n</answer>\s*", flags=re.DOTALL)
_SOFT = re.compile(r"<reasoning>.*?</reasoning>.*?<answer>.*?</answer>", flags=re.DOTALL)


def user_prompt(history_titles: Sequence[str], history_liked: Sequence[bool], target_title: str) -> str:
    """The user turn: the liked / disliked history (oldest first) and the target movie.

    Example:
        >>> print(user_prompt(["Heat (1995)", "Fargo (1996)"], [True, False], "Casino (1995)"))
        The user's past movies, oldest first:
        1. Heat (1995): Liked
        2. Fargo (1996): Disliked
        Will the user like Casino (1995)? Answer Yes or No.
    """
    if len(history_titles) != len(history_liked):
        raise ValueError(f"{len(history_titles)} titles for {len(history_liked)} like flags")
    lines = [
        f"{i}. {t}: {'Liked' if liked else 'Disliked'}"
        for i, (t, liked) in enumerate(zip(history_titles, history_liked, strict=True), 1)
    ]
    shown = "\n".join(lines) if lines else "(none)"
    question = f"Will the user like {target_title}? Answer Yes or No."
    return f"The user's past movies, oldest first:\n{shown}\n{question}"


def item_label(title: str, year: object = None) -> str:
    """``Title (Year)`` when the year is known (not empty, not NaN), else the title."""
    y = "" if year is None else str(year).strip()
    if y.endswith(".0"):  # a year read back as a float
        y = y[:-2]
    return f"{title} ({y})" if y and y.lower() != "nan" else str(title)


def like_view(
    samples: pd.DataFrame, items: pd.DataFrame, *, history: int = 10, like_threshold: float = 4.0
) -> pd.DataFrame:
    """The like/dislike view of prepared samples: the last ``history`` rated items, with titles.

    Args:
        samples: ``rrec.data.build_samples`` rows (a prepared split): ``user_id``, ``history``,
            ``history_ratings``, ``target``, ``rating``, ``timestamp``. Rows with a NaN rating are
            dropped; unrated history items are skipped before the cut; a row left with no history too.
        items: the item table (``item_id``, ``title``, optional ``year``).
        history: H, the most recent rated history items kept (TALLRec: 10).
        like_threshold: the smallest rating that counts as a like (CoLLM: 4).

    Returns:
        Columns ``user_id``, ``history``, ``history_titles``, ``history_ratings``, ``history_liked``,
        ``target``, ``target_title``, ``rating``, ``label`` (bool), ``timestamp``, in the order of
        ``samples`` (index reset).

    Example:
        History ratings [5, 2, NaN, 4] with H = 2 keep the last two rated items, 2 and 4: liked [False,
        True]; a target rated 3 gets label False (3 < 4).
    """
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    years = items["year"] if "year" in items.columns else [None] * len(items)
    labels = {
        str(i): item_label(t, y) for i, t, y in zip(items["item_id"], items["title"], years, strict=True)
    }
    rated = samples[samples["rating"].notna()]
    rows = []
    for u, h, hr, t, r, ts in zip(
        rated["user_id"], rated["history"], rated["history_ratings"], rated["target"], rated["rating"],
        rated["timestamp"], strict=True,
    ):  # fmt: skip
        pairs = [(str(i), float(x)) for i, x in zip(h, hr, strict=True) if x == x]  # x == x: not NaN
        pairs = pairs[-history:]
        if not pairs:
            continue
        hist = [i for i, _ in pairs]
        ratings = [x for _, x in pairs]
        rows.append({
            "user_id": str(u), "history": hist, "history_titles": [labels.get(i, i) for i in hist],
            "history_ratings": ratings, "history_liked": [x >= like_threshold for x in ratings],
            "target": str(t), "target_title": labels.get(str(t), str(t)), "rating": float(r),
            "label": bool(float(r) >= like_threshold), "timestamp": float(ts),
        })  # fmt: skip
    columns = ["user_id", "history", "history_titles", "history_ratings", "history_liked", "target",
               "target_title", "rating", "label", "timestamp"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def parse_answer(text: str) -> bool | None:
    """True for Yes/Like, False for No/Dislike inside the single ``<answer>`` block, else None.

    Case and surrounding whitespace are ignored, and so is trailing "." or "!"; any other text is None.

    Example:
        >>> parse_answer("<reasoning>\\nfans of heists\\n</reasoning>\\n<answer>\\n yes \\n</answer>")
        True
        >>> parse_answer("<answer>Dislike</answer>"), parse_answer("<answer>Maybe</answer>")
        (False, None)
    """
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    m = _ANSWER.search(text)
    if m is None:  # "</answer>" before "<answer>"
        return None
    word = m.group(1).strip().rstrip(".!").strip().lower()  # "Yes." is an answer; "Yes, but" is not
    return True if word in YES else False if word in NO else None


def is_strict_format(text: str) -> bool:
    """The completion is exactly the template: each tag once, blocks non-blank, whitespace around."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    m = _STRICT.fullmatch(text)
    return m is not None and all(block.strip() for block in m.groups())


def correctness_reward(completions: list[str], label: Sequence[bool], **_) -> list[float]:
    """1.0 when the parsed answer equals the completion's label, else 0.0 (unparseable: 0.0).

    Example:
        >>> no = "<answer>No</answer>"
        >>> correctness_reward([no, no, "No"], label=[False, True, False])  # right, wrong, no block
        [1.0, 0.0, 0.0]
    """
    return [float(parse_answer(c) == bool(y)) for c, y in zip(completions, label, strict=True)]


def strict_format_reward(completions: list[str], **_) -> list[float]:
    """1.0 when the completion is exactly the template (``is_strict_format``), else 0.0.

    Example:
        >>> ok = "<reasoning>\\nhe likes heists\\n</reasoning>\\n<answer>\\nYes\\n</answer>\\n"
        >>> strict_format_reward([ok, ok.replace("\\n", "")])  # no line breaks around the contents
        [1.0, 0.0]
    """
    return [float(is_strict_format(c)) for c in completions]


def soft_format_reward(completions: list[str], **_) -> list[float]:
    """1.0 when a reasoning block and, later, an answer block appear (anything around), else 0.0.

    Example:
        >>> chatty = "Sure! <reasoning>a</reasoning> so: <answer>Yes</answer> :)"
        >>> soft_format_reward([chatty, "<answer>Yes</answer>"])  # the second has no reasoning block
        [1.0, 0.0]
    """
    return [float(_SOFT.search(c) is not None) for c in completions]


REWARD_FUNCS: tuple[RewardFunc, ...] = (correctness_reward, strict_format_reward, soft_format_reward)
REWARD_NAMES: tuple[str, ...] = ("correctness", "strict_format", "soft_format")


def weighted_reward(rewards: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(B*G,) total reward: the (B*G, F) reward matrix of ``REWARD_FUNCS`` times the F weights.

    Example:
        >>> weighted_reward(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]), [2.0, 0.5, 0.5])
        tensor([3.0000, 0.5000])
    """
    if rewards.shape[1] != len(weights):
        raise ValueError(f"{rewards.shape[1]} reward columns for {len(weights)} weights")
    return rewards.float() @ torch.tensor([float(w) for w in weights], dtype=torch.float32)  # (B*G,)


def accuracy_metrics(
    predictions: Sequence[bool | None],
    labels: Sequence[bool],
    users: Sequence,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    r"""Accuracy, parse rate and Yes rate of N answers, with 95% user-bootstrap intervals.

    :math:`\mathrm{acc} = \frac1N \sum_i [\hat y_i = y_i]`, an unparseable answer (None) counting as
    wrong; ``parse_rate`` = share of answers that parse, ``yes_rate`` = share answered Yes (of all N),
    ``label_yes_rate`` = share of liked targets (the accuracy of always answering Yes).

    Returns:
        ``n``, ``label_yes_rate`` and ``accuracy``, ``parse_rate``, ``yes_rate``, each of the last
        three with ``_low`` / ``_high`` bounds.

    Example:
        Labels [T, F, T, F], answers [T, None, F, F]: accuracy 2/4 = 0.5 (the None is wrong), parse
        rate 3/4, Yes rate 1/4, label Yes rate 2/4.
    """
    if not len(predictions) == len(labels) == len(users) or not predictions:
        raise ValueError(f"{len(predictions)} predictions, {len(labels)} labels, {len(users)} users")
    y = [bool(v) for v in labels]
    per_sample = {
        "accuracy": [float(p is not None and p == t) for p, t in zip(predictions, y, strict=True)],
        "parse_rate": [float(p is not None) for p in predictions],
        "yes_rate": [float(p is True) for p in predictions],
    }
    out: dict[str, float] = {"n": float(len(y)), "label_yes_rate": sum(y) / len(y)}
    groups = list(users)
    for name, values in per_sample.items():
        v = torch.tensor(values, dtype=torch.float64)  # (N,)
        lo, hi = bootstrap_ci(v, groups, n_resamples=n_resamples, seed=seed)
        out[name], out[f"{name}_low"], out[f"{name}_high"] = float(v.mean()), lo, hi
    return out
