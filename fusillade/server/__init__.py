"""The OpenAI-compatible Files and Batches HTTP API (``fusillade serve``); see docs/api.md.

- ``serve.serve(settings, ...)``: the API and (by default) a daemon in one trio task tree,
  reporting a ``Running`` handle (bound URL, ``stop()``) through ``task_status``.
- ``app.create_app(ctx)``: the bare Litestar ASGI application around a ``ServerContext``.
- ``remote``: the ``submit``/``status``/``cancel``/``results`` commands.

Modules: ``wire`` (the JSON objects), ``errors`` (exceptions -> envelopes), ``auth``
(bearer keys), ``upload`` + ``spool`` (streamed multipart uploads), ``files`` and
``batches`` (the routes), ``command`` (the ``serve`` command line).
"""

from __future__ import annotations
