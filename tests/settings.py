"""Settings for the test suite (the demo keeps its own)."""

import os
import tempfile

SECRET_KEY = "tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "channels",
    "django_prometheus",
    "wsmonitor",
]
# A file, not ":memory:": Django never closes an in-memory test database, and channels'
# consumers (which close old connections on every message) would then find it open in tests
# that have no database access.
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:",
    "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"wsmonitor-tests-{os.getpid()}.sqlite3")},
}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
USE_TZ = True
WSMONITOR = {"NODE": "test-node", "CLOSE_CODES": {4001: "unauthorised"}}
ROOT_URLCONF = "tests.urls"
