import logging

from django.apps import AppConfig


class WSMonitorConfig(AppConfig):
    name = "wsmonitor"
    verbose_name = "WebSocket monitoring"

    def ready(self):
        # The built-in features plug themselves into the lifecycle on import.
        from . import checks, heartbeat, metrics, reconnect, registry, saturation  # noqa: F401
        from .conf import get_config
        from .logging import configure

        config = get_config()  # the documented defaults while WSMONITOR is invalid
        if config["LOGS"] and config["CONFIGURE_LOGGING"]:
            configure()
        # daphne and uvicorn never run system checks: say it where the server logs.
        log = logging.getLogger("wsmonitor")
        for problem in checks.startup_problems():
            level = logging.ERROR if problem.is_serious() else logging.WARNING
            hint = f" HINT: {problem.hint}" if problem.hint else ""
            extra = " wsmonitor runs with its documented defaults until it is fixed." if (
                problem.id or "").startswith("wsmonitor.E0") and problem.id != "wsmonitor.E018" \
                else ""
            log.log(level, "%s: %s%s%s", problem.id, problem.msg, hint, extra)
        metrics.set_capacity()
        from . import multiprocess

        if multiprocess.directory():  # several processes share PROMETHEUS_MULTIPROC_DIR
            multiprocess.start(config["NODE"])
