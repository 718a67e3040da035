"""Serving an edited model: an OpenAI-compatible HTTP server over one ``EditSession``, with edits applied and
rolled back while it runs (``lifelong serve``; user guide: ``docs/serving.md``).

``engine``: the session behind the API (locking, syncing with other writers, generation, streaming);
``app``: the FastAPI routes, errors, token check and body limit; ``server``: the start-up checks and uvicorn.
"""
