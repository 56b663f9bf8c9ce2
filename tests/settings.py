"""Settings for the test suite (the demo keeps its own)."""

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
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
USE_TZ = True
WSMONITOR = {"NODE": "test-node", "CLOSE_CODES": {4001: "unauthorised"}}
ROOT_URLCONF = "tests.urls"
