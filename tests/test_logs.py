"""Structured logs: one ws_open / ws_close per session, the session ID everywhere, safe lines."""

import json
import logging

import structlog
from channels.testing import WebsocketCommunicator

from wsmonitor import InstrumentedAsyncWebsocketConsumer
from wsmonitor.logging import _Handler

from . import consumers


class Chatty(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        structlog.get_logger("user.code").info("user_event", text=text_data)
        await self.send(text_data=text_data)


def events(caplog):
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


async def test_open_close_and_user_events_carry_the_session_id(caplog):
    caplog.set_level(logging.INFO)
    communicator = WebsocketCommunicator(Chatty.as_asgi(), "/ws/chatty/")
    assert (await communicator.connect(timeout=3))[0]
    for index in range(10):
        await communicator.send_to(text_data=f"m{index}")
        await communicator.receive_from(timeout=3)
    await communicator.disconnect(code=1001, timeout=3)

    logged = events(caplog)
    names = [e["event"] for e in logged]
    assert names == ["ws_open"] + ["user_event"] * 10 + ["ws_close"]
    session_ids = {e["session_id"] for e in logged}
    assert len(session_ids) == 1 and None not in session_ids
    opened, closed = logged[0], logged[-1]
    assert opened["consumer"] == "Chatty" and opened["path"] == "/ws/chatty/"
    assert closed["code"] == 1001
    assert (closed["messages_in"], closed["messages_out"]) == (10, 10)
    assert (closed["bytes_in"], closed["bytes_out"]) == (20, 20)
    assert closed["duration"] >= 0


async def test_reject_and_error_events(caplog):
    caplog.set_level(logging.INFO)
    communicator = WebsocketCommunicator(consumers.Denied.as_asgi(), "/ws/")
    assert not (await communicator.connect(timeout=3))[0]
    await communicator.disconnect(timeout=3)
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), "/ws/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="boom")
    try:
        await communicator.wait(timeout=3)
    except RuntimeError:
        pass
    logged = events(caplog)
    reject = next(e for e in logged if e["event"] == "ws_reject")
    assert reject["reason"] == "denied"
    error = next(e for e in logged if e["event"] == "ws_error")
    assert error["stage"] == "receive"
    records = [r for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == "ws_error"]
    assert records[0].levelno == logging.ERROR
    close = next(e for e in logged if e["event"] == "ws_close")
    assert close["code"] == 1011 and close["session_id"] == error["session_id"]


def test_client_strings_never_break_a_json_line():
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, _Handler))
    hostile = 'evil\n{"event": "forged"}\r\x00\x1b[31m\u2028"'
    logger = structlog.get_logger("wsmonitor.test")
    record_holder = []

    class Grab(logging.Handler):
        def emit(self, record):
            record_holder.append(record)

    grab = Grab()
    logging.getLogger("wsmonitor.test").addHandler(grab)
    try:
        logger.warning("ws_open", path=hostile, user_agent=hostile)
    finally:
        logging.getLogger("wsmonitor.test").removeHandler(grab)
    line = handler.format(record_holder[0])
    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert parsed["path"] == hostile and parsed["event"] == "ws_open"


def test_django_records_share_the_json_format():
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, _Handler))
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1,
                               "Not Found: %s", ("/nowhere\n",), None)
    parsed = json.loads(handler.format(record))
    assert parsed["event"] == "Not Found: /nowhere\n"
    assert parsed["level"] == "warning" and parsed["logger"] == "django.request"


def test_the_formatter_can_be_named_in_django_logging(tmp_path):
    import logging.config

    path = tmp_path / "named.log"
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False, "incremental": False,
        "formatters": {"wsm": {"()": "wsmonitor.logging.Formatter", "format": "json"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path),
                              "formatter": "wsm"}},
        "loggers": {"named.test": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    })
    try:
        structlog.get_logger("named.test").info("ws_open", consumer="X")
        logging.getLogger("named.test").warning("plain %s", "record")
    finally:
        for handler in logging.getLogger("named.test").handlers:
            handler.close()
        logging.getLogger("named.test").handlers.clear()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["event"] == "ws_open" and first["consumer"] == "X"
    assert second["event"] == "plain record" and second["logger"] == "named.test"


def test_configure_never_removes_a_handler_the_project_configured():
    from wsmonitor.logging import configure

    root = logging.getLogger()
    saved = list(root.handlers)
    project = logging.StreamHandler()
    try:
        root.handlers[:] = [project]
        assert configure() is False
        assert root.handlers == [project]
        daphne = logging.StreamHandler()  # what daphne's logging.basicConfig() adds
        daphne.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)-8s %(message)s"))
        root.handlers[:] = [daphne]
        assert configure() is True
        assert [type(h) for h in root.handlers] == [_Handler]
    finally:
        root.handlers[:] = saved
