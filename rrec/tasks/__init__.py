"""The sibling systems' task definitions: prompts, answer parsers, rewards ``(completions, **columns) ->
list[float]`` and metrics, one module per system. Their training loops are in ``recipes/``; the GRPO
core they share is ``rrec.grpo`` (on ``rrec.recpo``'s advantages and token-level loss)."""
