"""wsmonitor.js in node with a stand-in WebSocket: what it puts on the wire, exactly."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import need

SCRIPT = Path(__file__).resolve().parent.parent / "wsmonitor/static/wsmonitor/wsmonitor.js"
REAL = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"

HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const cases = JSON.parse(process.argv[2]);
const results = [];
for (const c of cases) {
  const sent = [], urls = [];
  class FakeSocket {
    constructor(url) { urls.push(url); this.readyState = 1; }
    send(data) { sent.push(data); }
    close() {}
  }
  FakeSocket.OPEN = 1;
  const meta = c.meta === null ? null : {getAttribute: () => c.meta};
  const window = {
    location: {protocol: "http:", host: "example.test"},
    document: {querySelector: () => meta},
    WebSocket: FakeSocket, ArrayBuffer, Uint8Array, setTimeout, clearTimeout,
  };
  const context = vm.createContext({window, WebSocket: FakeSocket, ArrayBuffer, Uint8Array});
  vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), context);
  let option = c.option;
  if (c.function) option = () => c.function;
  const client = window.WSMonitor.connect("/ws/x/", option === undefined ? {json: true}
                                                                        : {json: true, traceparent: option});
  client.send({message: "hi"});
  client.send({message: "own", traceparent: "kept-as-is"});
  results.push({url: urls[0], sent: sent.map((s) => JSON.parse(s)),
                api: Object.keys(window.WSMonitor).sort()});
}
console.log(JSON.stringify(results));
"""


def run(cases):
    need(shutil.which("node") is not None, "node is not installed")
    out = subprocess.run(["node", "-e", HARNESS, str(SCRIPT), json.dumps(cases)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("case, expected", [
    ({"meta": None}, None),  # no context: nothing sent, the server's sampler decides
    ({"meta": REAL}, REAL),  # the page rendered the request's context
    ({"meta": None, "option": REAL}, REAL),
    ({"meta": None, "function": REAL}, REAL),  # the page's own tracing library
    ({"meta": REAL, "option": False}, None),
    ({"meta": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, None),  # invalid trace ID
    ({"meta": "not a traceparent"}, None),
    ({"meta": None, "function": None}, None),
])
def test_trace_context_is_sent_only_when_the_page_has_a_real_one(case, expected):
    (result,) = run([case])
    assert ("traceparent=" in result["url"]) == (expected is not None), result["url"]
    if expected:
        assert result["url"].endswith("traceparent=" + expected)
    assert result["sent"][0] == ({"message": "hi", "traceparent": expected} if expected
                                 else {"message": "hi"})
    assert result["sent"][1] == {"message": "own", "traceparent": "kept-as-is"}
    assert result["api"] == ["Client", "connect"]
