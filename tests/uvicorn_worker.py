"""gunicorn worker for tests/test_servers.py: uvicorn's worker with its implementations named.

``gunicorn -k tests.uvicorn_worker.Worker``; ``TESTS_UVICORN_CONFIG`` (JSON) holds uvicorn
``Config`` arguments gunicorn has no flags for (``ws``, ``ws_ping_interval``, ...).
"""

import json
import os
import warnings

with warnings.catch_warnings():  # uvicorn points to the separate uvicorn-worker package
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS,
                     **json.loads(os.environ.get("TESTS_UVICORN_CONFIG", "{}"))}
