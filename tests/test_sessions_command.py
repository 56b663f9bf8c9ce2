"""`manage.py wsmonitor_sessions list --json` prints one JSON document."""

import io
import json
import time
import uuid

import pytest
from django.core.management import call_command
from django.test import override_settings

from wsmonitor import registry


@pytest.fixture
def two_sessions(redis_url):
    """Two sessions of a made-up node, written the way a serving process writes them."""
    node = f"json-{uuid.uuid4().hex[:6]}"
    key = f"{registry.KEY_PREFIX}{node}:1:{uuid.uuid4().hex[:8]}"
    entries = [{"session_id": str(uuid.uuid4()), "node": node, "pid": 1, "consumer": "Echo",
                "path": f'/ws/{i}/"\n', "opened_at": time.time() - i, "layer": "default",
                "channel": f"specific.x!{i}"} for i in range(2)]
    client = registry._client(redis_url)
    client.hset(key, mapping={e["session_id"]: json.dumps(e) for e in entries})
    client.expire(key, 30)
    try:
        with override_settings(WSMONITOR={"REGISTRY_URL": redis_url}):
            yield node, entries
    finally:
        client.delete(key)
        client.close()


def test_list_json_is_one_document(two_sessions):
    node, entries = two_sessions
    out = io.StringIO()
    call_command("wsmonitor_sessions", "list", "--node", node, "--json", stdout=out)
    document = json.loads(out.getvalue())  # one document, whatever the paths hold
    assert document["count"] == 2
    assert [s["session_id"] for s in document["sessions"]] == [
        e["session_id"] for e in sorted(entries, key=lambda e: e["opened_at"])]


def test_list_json_with_no_session_is_still_a_document(two_sessions):
    out = io.StringIO()
    call_command("wsmonitor_sessions", "list", "--node", "no-such-node", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"sessions": [], "count": 0}
