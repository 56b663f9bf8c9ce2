from django.apps import AppConfig


class WSMonitorConfig(AppConfig):
    name = "wsmonitor"
    verbose_name = "WebSocket monitoring"

    def ready(self):
        # The built-in features plug themselves into the lifecycle on import.
        from . import (checks, heartbeat, metrics, reconnect, registry,  # noqa: F401
                       saturation, server_kills)
        from .console import snapshot  # noqa: F401 - the console's sampler feature
        from .conf import METRICS_REFUSED, get_config
        from .logging import configure, logger

        config = get_config()  # the documented defaults while WSMONITOR is invalid
        if config["LOGS"] and config["CONFIGURE_LOGGING"]:
            configure()
        # daphne and uvicorn never run system checks: say it where the server logs.
        settings_invalid = bool(checks.settings_errors())
        for problem in checks.startup_problems():
            log = logger.error if problem.is_serious() else logger.warning
            log("ws_config_error" if problem.is_serious() else "ws_config_warning",
                check=problem.id, message=problem.msg, hint=problem.hint)
        if settings_invalid:
            extra = []
            if config[METRICS_REFUSED] is not None:
                extra.append("/metrics refuses every request (the settings name an access "
                             "rule)")
            if config["REDACT_CLIENTS"]:
                extra.append("client addresses stay redacted")
            logger.error("ws_config_error", check="wsmonitor.E000",
                         message="WSMONITOR is invalid: wsmonitor runs with its documented "
                                 "defaults until it is fixed"
                                 + (", except that " + " and ".join(extra) if extra else "")
                                 + ".")
        metrics.set_capacity()
        from . import multiprocess

        if multiprocess.directory():  # several processes share PROMETHEUS_MULTIPROC_DIR
            multiprocess.start(config["NODE"])
