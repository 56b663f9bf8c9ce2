"""What each server process publishes for the console, every ``CONSOLE_INTERVAL`` seconds.

A daemon thread per process samples, off the event loop and never per message:

* its open sessions (identity fixed at open, live counts read from the connection),
* its counters, read from the same Prometheus instruments ``/metrics`` exports,
  appended to a ring of ``CONSOLE_HISTORY`` seconds for the charts,
* the connections that closed since the last sample (recorded by the ``closed`` hook).

With ``REGISTRY_URL`` the snapshot goes to Redis (see :mod:`wsmonitor.console.store`) so
a console on any node sees every process; only sessions whose counts changed are
rewritten. Without it the console reads this object directly.
"""

import json
import os
import threading
import time
import uuid
from collections import deque

from .. import connection, features
from .. import metrics as _metrics
from ..conf import DEFAULTS, get_config
from ..logging import logger

PREFIX = "wsmonitor:console:"
PROCESS_KEY = PREFIX + "process:"  # JSON document of one process
SESSIONS_KEY = PREFIX + "sessions:"  # hash: session ID -> JSON entry
SERIES_KEY = PREFIX + "series:"  # list: the chart ring, oldest first
CLOSED_KEY = PREFIX + "closed:"  # list: recent closes, newest first
#: JSON list of [session ID, opened_at, consumer, path, user] per process: what the sessions
#: page filters and sorts on, parsed in one call instead of one per session.
INDEX_KEY = PREFIX + "index:"

#: "Close all" sends this by default. 1012 (service restart) is what the protocol means, but
#: daphne lets applications send only 1000 and 3000-4999; reserved, so that
#: ``ws_closes_total`` counts it as itself rather than as ``4xxx``.
DRAIN_CODE = DEFAULTS["CONSOLE_DRAIN_CODE"]
_metrics.reserve_close_code(DRAIN_CODE)

#: Longest client-controlled string kept (path, user agent, user name, subprotocol).
MAX_TEXT = 2048
REDACTED = connection.REDACTED


def clip(value):
    if value is None:
        return None
    value = value if isinstance(value, str) else str(value)
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"


def timing(config):
    """(interval, stale after, gone after) in seconds."""
    interval = config["CONSOLE_INTERVAL"]
    return interval, 2.5 * interval, max(config["REGISTRY_TTL"], 6 * interval)


def open_connections():
    """This process's accepted, unfinished connections (a copy)."""
    return list(connection.open_connections())


def _user(scope, redact):
    """The user name; "" for an anonymous user; None when the ASGI stack sets no user."""
    user = scope.get("user")
    if user is None:
        return None
    from django.utils.functional import LazyObject, empty

    if isinstance(user, LazyObject) and user._wrapped is empty:
        return None  # never resolved: reading it here would query the database
    try:
        if not user.is_authenticated:
            return ""
        name = user.get_username()
    except Exception:
        return None
    return REDACTED if redact else clip(name)


def _header(scope, name):
    for key, value in scope.get("headers") or ():
        if key == name:
            return clip(value.decode("latin-1"))
    return None


def _trace_id(conn):
    span = conn.span
    if span is None:
        return None
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def last_rtt(conn):
    """The newest heartbeat round trip of ``conn`` in seconds; None before the first pong."""
    heartbeat = conn.state.get("heartbeat")
    value = None if heartbeat is None else heartbeat.last_rtt
    return None if value is None else round(value, 6)


def group_memberships(channel, alias):
    """``[[group, joined_at], ...]`` of a channel, where its layer records memberships, else None.

    wsmonitor's layer classes keep, per process, which local channel joined which group
    when (``_wsm_joined``); other layers cannot tell.
    """
    if not channel:
        return None
    from channels.layers import channel_layers

    layer = channel_layers.backends.get(alias or "default")  # never create one here
    joined = getattr(layer, "_wsm_joined", None)
    if not isinstance(joined, dict):
        return None
    groups = joined.get(channel) or {}
    return [[clip(group), at] for group, at in list(groups.items())]


def identity(conn, process, node, pid, redact):
    """What is fixed for the session's whole life: computed once."""
    scope = conn.scope
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    requested = scope.get("subprotocols") or ()
    return {
        "session_id": conn.session_id, "process": process, "node": node, "pid": pid,
        "consumer": clip(conn.label), "kind": conn.kind, "path": clip(scope.get("path")),
        "client": REDACTED if (redact and address) else clip(address),
        "user_agent": _header(scope, b"user-agent"),
        "subprotocol": clip(conn.subprotocol),
        "requested_subprotocols": clip(", ".join(map(str, requested))) or None,
        "opened_at": conn.opened_at, "trace_id": _trace_id(conn),
        "layer": conn.layer_alias, "channel": conn.channel_name,
    }


def describe(conn, static):
    """``static`` plus the live part of one session."""
    entry = dict(static)
    entry.update(
        user=static.get("user"), messages_in=conn.messages_in, messages_out=conn.messages_out,
        bytes_in=conn.bytes_in, bytes_out=conn.bytes_out, rtt=last_rtt(conn),
        groups=group_memberships(static["channel"], static["layer"]),
        closable=conn.closable)
    return entry


# --- Counters, read from the instruments /metrics exports -----------------------------------

def read_counters(node):
    """This process's totals for ``node``: the figures the fleet charts draw."""
    from .. import metrics

    totals = {"connects": 0.0, "closes": 0.0, "in": 0.0, "out": 0.0, "errors": 0.0}
    codes, rtt = {}, {}

    def samples(instrument, suffix):
        for family in instrument.collect():
            for sample in family.samples:
                if sample.name.endswith(suffix) and sample.labels.get("node") == node:
                    yield sample

    for sample in samples(metrics.CONNECTS, "_total"):
        totals["connects"] += sample.value
    for sample in samples(metrics.CLOSES, "_total"):
        totals["closes"] += sample.value
        code = sample.labels["code"]
        codes[code] = codes.get(code, 0) + sample.value
    for sample in samples(metrics.MESSAGE_SIZE, "_count"):
        totals[sample.labels["direction"]] += sample.value
    for sample in samples(metrics.ERRORS, "_total"):
        totals["errors"] += sample.value
    for sample in samples(metrics.HEARTBEAT_RTT, "_bucket"):
        rtt[sample.labels["le"]] = rtt.get(sample.labels["le"], 0) + sample.value
    return totals, {code: n for code, n in codes.items() if n}, rtt


# --- The publisher --------------------------------------------------------------------------

class Publisher:
    """This process's sampler and, with a registry URL, its writer to Redis."""

    def __init__(self):
        config = get_config()
        self.node, self.pid = config["NODE"], os.getpid()
        self.process = f"{self.node}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.lock = threading.Lock()
        self.series = deque(maxlen=self._ring_length(config))
        self.recent = deque(maxlen=config["CONSOLE_CLOSED_KEEP"])  # newest last
        # Closes not written to Redis yet; bounded like the list they go to, so a process with
        # no registry (or a registry that is down) never grows it.
        self.unpushed = deque(maxlen=config["CONSOLE_CLOSED_KEEP"])
        # session ID -> hash of the JSON last written to Redis: a few bytes per open
        # connection, not a copy of its entry (idle connections must stay cheap).
        self.published = {}
        self.index = None  # the index last written to Redis
        self.document = None  # the newest process document
        self.thread = None
        self.wake = threading.Event()
        self.store = None
        self.full = True  # rewrite everything in Redis at the next flush
        self.failing = False

    @staticmethod
    def _ring_length(config):
        return max(2, int(config["CONSOLE_HISTORY"] / config["CONSOLE_INTERVAL"]) + 1)

    # --- hooks (event loop) ---
    def opened(self, conn):
        self.ensure_running()

    def closed(self, conn):
        """Record a close; runs once per connection on the event loop, no I/O."""
        entry = describe(conn, self._identity(conn, get_config()["REDACT_CLIENTS"]))
        code = conn.code
        if not isinstance(code, int):
            code = 1005 if code is None else None
        now = time.time()
        entry.update(code=code, closed_by=conn.closed_by, closed_at=now,
                     duration=round(now - entry["opened_at"], 3), closable=False)
        self.recent.append(entry)
        if get_config()["REGISTRY_URL"]:
            self.unpushed.append(entry)

    # --- the thread ---
    def ensure_running(self):
        if self.thread is not None and self.thread.is_alive():
            return
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="wsmonitor-console",
                                               daemon=True)
                self.thread.start()

    def _run(self):
        while True:
            config = get_config()
            if not config["CONSOLE"]:
                return
            try:
                self.sample(config)
            except Exception as exc:
                if not self.failing and config["LOGS"]:
                    logger.warning("ws_console_error", error=f"{type(exc).__name__}: {exc}")
                self.failing, self.full = True, True
            else:
                if self.failing and config["LOGS"]:
                    logger.info("ws_console_recovered")
                self.failing = False
            self.wake.wait(config["CONSOLE_INTERVAL"])
            self.wake.clear()

    def sessions(self, config=None):
        """``{session ID: entry}`` of this process's open sessions, read now."""
        config = config or get_config()
        redact = config["REDACT_CLIENTS"]
        # Worked out afresh at each sample rather than cached per session: a cache would
        # cost every idle connection about a kilobyte for the process's whole life.
        return {conn.session_id: describe(conn, self._identity(conn, redact))
                for conn in open_connections()}

    def _identity(self, conn, redact):
        static = identity(conn, self.process, self.node, self.pid, redact)
        static["user"] = _user(conn.scope, redact)
        return static

    def sample(self, config):
        now = time.time()
        if config["REGISTRY_URL"]:
            sessions = self.sessions(config)
            active = len(sessions)
            users_known = any(s.get("user") is not None for s in sessions.values())
        else:
            # Nothing to publish: the page reads the sessions afresh (local_state), so they
            # are only counted here. Describing each one every few seconds cost a process
            # with 10,000 idle sockets CPU and a memory peak for nothing.
            sessions = None
            connections = open_connections()
            active = len(connections)
            redact = config["REDACT_CLIENTS"]
            users_known = any(_user(conn.scope, redact) is not None for conn in connections)
        totals, codes, rtt = read_counters(self.node)
        point = {"t": round(now, 3), "active": active, **totals, "codes": codes,
                 "rtt": rtt}
        if self.series.maxlen != self._ring_length(config):
            self.series = deque(self.series, maxlen=self._ring_length(config))
        self.series.append(point)
        self.document = {
            "process": self.process, "node": self.node, "pid": self.pid,
            "started_at": self.started_at, "published_at": now,
            "interval": config["CONSOLE_INTERVAL"], "active": active,
            "multiprocess": _multiprocess(), "users_known": users_known,
        }
        if sessions is not None:
            self._flush(config, sessions, point)

    def _flush(self, config, sessions, point):
        from .store import redis_client

        if self.store is None or self.store[0] != config["REGISTRY_URL"]:
            self.store = (config["REGISTRY_URL"], redis_client(config["REGISTRY_URL"]))
            self.full = True
        client = self.store[1]
        _, _, gone = timing(config)
        ttl = max(1, int(gone))
        history = max(ttl, int(config["CONSOLE_HISTORY"]))
        keep = config["CONSOLE_CLOSED_KEEP"]
        process = self.process
        full = self.full
        encoded = {sid: json.dumps(entry, separators=(",", ":"))
                   for sid, entry in sessions.items()}
        if full:
            changed, removed = encoded, []
        else:
            published = self.published
            changed = {sid: text for sid, text in encoded.items()
                       if published.get(sid) != hash(text)}
            removed = [sid for sid in published if sid not in encoded]
        closes = list(self.unpushed)
        index = [[e["session_id"], e["opened_at"], e["consumer"], e["path"], e["user"]]
                 for e in sessions.values()]
        pipe = client.pipeline(transaction=False)
        pipe.exists(PROCESS_KEY + process)
        sessions_key, series_key = SESSIONS_KEY + process, SERIES_KEY + process
        if full:
            pipe.delete(sessions_key, series_key)
            series = [json.dumps(p, separators=(",", ":")) for p in self.series]
            if series:
                pipe.rpush(series_key, *series)
        else:
            pipe.rpush(series_key, json.dumps(point, separators=(",", ":")))
        pipe.ltrim(series_key, -self.series.maxlen, -1)
        pipe.expire(series_key, ttl)
        if changed:
            pipe.hset(sessions_key, mapping=changed)
        if removed:
            pipe.hdel(sessions_key, *removed)
        pipe.expire(sessions_key, ttl)
        if full or index != self.index:
            pipe.set(INDEX_KEY + process, json.dumps(index, separators=(",", ":")), ex=ttl)
        else:
            pipe.expire(INDEX_KEY + process, ttl)
        pipe.set(PROCESS_KEY + process, json.dumps(self.document), ex=ttl)
        if closes:
            closed_key = CLOSED_KEY + process
            pipe.lpush(closed_key, *(json.dumps(c, separators=(",", ":")) for c in closes))
            pipe.ltrim(closed_key, 0, keep - 1)
            pipe.expire(closed_key, history)
        results = pipe.execute()
        self.published = {sid: hash(text) for sid, text in encoded.items()}
        self.index = index
        self.full = False
        sent = {id(c) for c in closes}  # those still queued: a full queue drops its oldest
        while self.unpushed and id(self.unpushed[0]) in sent:
            self.unpushed.popleft()
        if not results[0] and not full:
            self.full = True  # Redis lost our keys (restarted, flushed): rewrite next time

    # --- reading this process directly (no registry) ---
    def local_state(self):
        self.ensure_running()
        document = dict(self.document or {
            "process": self.process, "node": self.node, "pid": self.pid,
            "started_at": self.started_at, "published_at": time.time(),
            "interval": get_config()["CONSOLE_INTERVAL"], "multiprocess": _multiprocess()})
        sessions = self.sessions()
        document["active"] = len(sessions)
        document["users_known"] = any(s.get("user") is not None for s in sessions.values())
        return document, sessions, list(self.series), list(reversed(self.recent))

    def stop(self):
        """Stop the thread at its next wake-up (tests)."""
        self.wake.set()


def _multiprocess():
    from .. import multiprocess

    return bool(multiprocess.directory())


_publisher = None
_publisher_lock = threading.Lock()


def get_publisher():
    """This process's publisher (a new one after a fork or a change of node)."""
    global _publisher
    current = _publisher
    if current is None or current.pid != os.getpid() or current.node != get_config()["NODE"]:
        with _publisher_lock:
            current = _publisher
            if (current is None or current.pid != os.getpid()
                    or current.node != get_config()["NODE"]):
                _publisher = current = Publisher()
    return current


class ConsoleFeature(features.Feature):
    """Starts the sampler with the first connection and records every close."""

    name = "console"
    kinds = features.KINDS

    def opened(self, conn):
        if get_config()["CONSOLE"]:
            get_publisher().opened(conn)

    def closed(self, conn):
        if get_config()["CONSOLE"]:
            get_publisher().closed(conn)


# Like the built-in features: plugged in when wsmonitor's AppConfig imports this module.
features.register(ConsoleFeature())
