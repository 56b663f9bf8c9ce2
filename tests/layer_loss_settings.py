"""The demo's settings with a channel layer that loses messages quickly, for loss tests.

LOSS_EXPIRY and LOSS_GROUP_EXPIRY shorten the layer's expiry and group_expiry;
REDIS_URL selects wsmonitor's Redis layer (LOSS_PREFIX keeps each test's keys apart).
"""

import os

from demo_project.settings import *  # noqa: F403
from demo_project.settings import REDIS_URL

_config = {key: int(os.environ[env]) for key, env in
           (("expiry", "LOSS_EXPIRY"), ("group_expiry", "LOSS_GROUP_EXPIRY")) if env in os.environ}
if REDIS_URL:
    _config.update(hosts=[{"address": REDIS_URL, "socket_timeout": None}],
                   prefix=os.environ.get("LOSS_PREFIX", "asgi"), random_prefix_length=40)
    CHANNEL_LAYERS = {"default": {"BACKEND": "wsmonitor.layers.RedisChannelLayer",
                                  "CONFIG": _config}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "wsmonitor.layers.InMemoryChannelLayer",
                                  "CONFIG": _config}}
