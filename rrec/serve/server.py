"""Load a model folder for serving and run the app with uvicorn (``rrec serve``)."""

from __future__ import annotations

from pathlib import Path


def load_model(model_dir: str | Path, data: str | Path | None = None, device: str | None = None):
    """A ``ReasoningRecommender`` with an item table, ready to serve.

    Args:
        model_dir: a ``save_pretrained`` folder (its catalog and item table are used), a Hugging Face model
            folder, or ``rrec:<name>`` (a model shipped with the package).
        data: a prepared dataset folder (``rrec prepare``) whose items become the catalog; required when
            the model folder has no catalog. Given, it replaces the saved catalog and the table is rebuilt.
        device: ``cpu``, ``cuda``, ...; ``None``: the library's default.

    Raises:
        ValueError: no catalog anywhere.
    """
    from rrec.data import load_prepared
    from rrec.model import ReasoningRecommender

    catalog = load_prepared(data).items if data is not None else None
    model = ReasoningRecommender.from_pretrained(model_dir, catalog=catalog, device=device)
    if not model.catalog:
        raise ValueError(f"{model_dir} has no catalog: pass a prepared dataset (rrec serve MODEL --data DIR)")
    if model.rec_head is None or catalog is not None:
        print(f"building the item table of {len(model.catalog):,} items ...", flush=True)
        model.build_item_table()
    return model


def start_in_thread(service, host: str = "127.0.0.1", port: int = 0):
    """Run ``service``'s app with uvicorn in a daemon thread (tests, benchmarks); ``port=0`` picks a free
    one. Returns ``(server, url)``; ``server.should_exit = True`` stops it."""
    import threading
    import time

    import uvicorn

    from rrec.serve.app import create_app

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="rrec-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    return server, f"http://{bound[0]}:{bound[1]}"


def run(model, host: str = "127.0.0.1", port: int = 8000, options=None) -> None:
    """Serve ``model`` until interrupted."""
    import uvicorn

    from rrec.serve.app import ServeOptions, Service, create_app

    service = Service(model, options or ServeOptions())
    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
