from django.apps import AppConfig


class WSMonitorConfig(AppConfig):
    name = "wsmonitor"
    verbose_name = "WebSocket monitoring"

    def ready(self):
        from . import checks, metrics
        from .conf import get_config
        from .logging import configure

        if checks.settings_errors():
            return  # the system checks report it; run with the defaults meanwhile
        metrics.set_capacity()
        config = get_config()
        from . import multiprocess

        if multiprocess.directory():  # several processes share PROMETHEUS_MULTIPROC_DIR
            multiprocess.start(config["NODE"])
        if config["LOGS"] and config["CONFIGURE_LOGGING"]:
            configure()
