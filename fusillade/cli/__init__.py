"""The ``fusillade`` command line: one module per command group, thin over the engine.

``_main`` holds the command table and the exit statuses; ``run`` the one-shot ``run``;
``serve`` the server command; ``remote`` the commands that talk to a database or a
server (``submit``, ``status``, ``results``, ...).
"""

from fusillade.cli._main import main

__all__ = ["main"]
