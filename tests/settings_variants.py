"""Project settings the lifecycle tests serve with a real server: the demo's, changed one way.

``TESTS_SETTINGS_VARIANT`` picks the change:

* ``bad-close-codes``: an invalid ``WSMONITOR["CLOSE_CODES"]``;
* ``root-file``: the project logs to a file through a root handler of its own
  (``TESTS_LOG_FILE``);
* ``fresh``: what ``startproject`` gives (DEBUG, no LOGGING) plus channels and wsmonitor.
"""

import os

from demo_project.settings import *  # noqa: F401,F403
from demo_project.settings import WSMONITOR

VARIANT = os.environ.get("TESTS_SETTINGS_VARIANT", "")

if VARIANT == "bad-close-codes":
    WSMONITOR = {**WSMONITOR, "CLOSE_CODES": 5}
elif VARIANT == "root-file":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"file": {"class": "logging.FileHandler",
                              "filename": os.environ["TESTS_LOG_FILE"]}},
        "root": {"handlers": ["file"], "level": "INFO"},
    }
elif VARIANT == "fresh":
    DEBUG = True
    del LOGGING  # noqa: F821 - Django's default logging, as in a fresh project
