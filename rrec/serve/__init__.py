"""``rrec serve``: a model behind HTTP, with request batching and catalog hot-swap (the ``serve`` extra).

    catalog.py  table versions: a change is built beside the live table, then swapped in one assignment
    batcher.py  one inference thread batching concurrent requests; counters and latency percentiles
    app.py      the FastAPI app: /recommend, /items, /health, /stats, and its 4xx rules
    server.py   loading a model folder (and a prepared dataset's catalog) and running uvicorn

Nothing is imported here, so ``import rrec.serve`` needs neither torch nor FastAPI.
"""
