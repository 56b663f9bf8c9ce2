"""Reading what the processes published: from Redis (every node) or from this process alone."""

import json
import time

from ..conf import get_config
from .snapshot import (
    CLOSED_KEY, INDEX_KEY, PROCESS_KEY, SERIES_KEY, SESSIONS_KEY, get_publisher, timing,
)

INDEX_FIELDS = ("session_id", "opened_at", "consumer", "path", "user")

#: Filters the sessions list accepts (query parameters).
FILTERS = ("consumer", "node", "path", "user", "session")


def redis_client(url, decode=False):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                decode_responses=decode)


class RedisSource:
    """Every process that published within ``gone after`` seconds, on any node."""

    shared = True

    def __init__(self, url):
        self.client = redis_client(url, decode=True)

    def close(self):
        self.client.close()

    def _keys(self, prefix):
        return sorted(self.client.scan_iter(match=prefix + "*", count=1000))

    def processes(self):
        keys = self._keys(PROCESS_KEY)
        documents = self.client.mget(keys) if keys else []
        return [json.loads(d) for d in documents if d]

    def series(self, processes):
        pipe = self.client.pipeline(transaction=False)
        for doc in processes:
            pipe.lrange(SERIES_KEY + doc["process"], 0, -1)
        return {doc["process"]: [json.loads(p) for p in points]
                for doc, points in zip(processes, pipe.execute(), strict=True)}

    def index(self):
        """``[{session_id, opened_at, consumer, path, user, node, process}]`` of every session."""
        documents = {d["process"]: d for d in self.processes()}
        keys = [INDEX_KEY + process for process in documents]
        rows = []
        for process, raw in zip(documents, self.client.mget(keys) if keys else [], strict=True):
            if raw:
                node = documents[process]["node"]
                rows.extend({**dict(zip(INDEX_FIELDS, row, strict=True)), "node": node,
                             "process": process} for row in json.loads(raw))
        return rows

    def entries(self, rows):
        """The full entries of index rows (those still open)."""
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            pipe.hget(SESSIONS_KEY + row["process"], row["session_id"])
        return [json.loads(value) for value in pipe.execute() if value is not None]

    def session(self, session_id):
        keys = self._keys(SESSIONS_KEY)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, session_id)
        for value in pipe.execute():
            if value is not None:
                return json.loads(value)
        return None

    def closed(self):
        keys = self._keys(CLOSED_KEY)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        entries = [json.loads(value) for values in pipe.execute() for value in values]
        return sorted(entries, key=lambda e: e["closed_at"], reverse=True)

    def sessions_of(self, process):
        return [json.loads(v) for v in self.client.hvals(SESSIONS_KEY + process)]


class LocalSource:
    """The process that serves the page, read directly (no registry)."""

    shared = False

    def __init__(self):
        self.publisher = get_publisher()
        self.document, self._sessions, self._series, self._closed = \
            self.publisher.local_state()

    def close(self):
        pass

    def processes(self):
        return [self.document]

    def series(self, processes):
        return {self.document["process"]: self._series}

    def sessions(self):
        return list(self._sessions.values())

    def index(self):
        return self.sessions()

    def entries(self, rows):
        return [self._sessions[r["session_id"]] for r in rows if r["session_id"] in self._sessions]

    def session(self, session_id):
        return self._sessions.get(session_id)

    def closed(self):
        return self._closed

    def sessions_of(self, process):
        return self.sessions() if process == self.document["process"] else []


def source():
    """Where the console reads from; the caller closes it."""
    url = get_config()["REGISTRY_URL"]
    get_publisher().ensure_running()  # this process shows up in the fleet too
    return RedisSource(url) if url else LocalSource()


def filter_sessions(sessions, filters):
    """Server-side filters: consumer and node exact, path and user substrings, session prefix."""
    consumer, node = filters.get("consumer"), filters.get("node")
    path, user, session = filters.get("path"), filters.get("user"), filters.get("session")
    user = user.casefold() if user else user
    result = []
    for s in sessions:
        if consumer and s.get("consumer") != consumer:
            continue
        if node and s.get("node") != node:
            continue
        if path and path not in (s.get("path") or ""):
            continue
        if user and user not in (s.get("user") or "").casefold():
            continue
        if session and not s["session_id"].startswith(session):
            continue
        result.append(s)
    result.sort(key=lambda s: s["opened_at"], reverse=True)  # newest first
    return result


def freshness(document, now=None, config=None):
    """(age in seconds, "live" or "stale") of a process document."""
    config = config or get_config()
    _, stale_after, _ = timing(config)
    age = max(0.0, (now or time.time()) - document["published_at"])
    return age, ("stale" if age > stale_after else "live")
