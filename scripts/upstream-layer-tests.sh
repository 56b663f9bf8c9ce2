#!/usr/bin/env bash
# Run channels_redis's own test suite against its classes (the baseline) and against
# wsmonitor's RedisChannelLayer and RedisPubSubChannelLayer; fail if wsmonitor's fail a
# test the baseline passes. Uses a private Redis and Sentinel on free ports (never 6379) and
# its own virtualenv, so it touches neither the shared Redis databases nor .venv.
# Usage: bash scripts/upstream-layer-tests.sh [channels-redis version]. Without one: the version
# installed in $PYTHON (.venv), then the oldest supported (scripts/matrix/oldest.txt), each in
# a virtualenv of its own (the oldest with the rest of oldest.txt's pins too).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
if [ $# -eq 0 ]; then
  installed=$("$PY" -c 'import channels_redis; print(channels_redis.__version__)')
  oldest=$(sed -n 's/^channels-redis==//p' scripts/matrix/oldest.txt)
  bash "$0" "$installed"
  [ "$oldest" = "$installed" ] || bash "$0" "$oldest"
  exit 0
fi
VERSION=$1
BASE=$(command -v python3.11 || command -v python3)
WORK=${UPSTREAM_WORK:-/tmp/wsmonitor-upstream}-$VERSION
mkdir -p "$WORK"

if [ ! -d "$WORK/src/tests" ]; then
  "$PY" -m pip download -q --no-binary :all: --no-deps "channels-redis==$VERSION" -d "$WORK/dl"
  mkdir -p "$WORK/src" && tar xzf "$WORK"/dl/channels_redis-"$VERSION".tar.gz -C "$WORK/src" --strip-components=1
fi
if [ ! -x "$WORK/venv/bin/python" ]; then
  pins=()
  if grep -qx "channels-redis==$VERSION" scripts/matrix/oldest.txt; then
    pins=(-r scripts/matrix/oldest.txt -c scripts/matrix/oldest.txt)
  fi
  asyncio=pytest-asyncio
  # Suites before 4.3 use the event_loop fixture that pytest-asyncio 1.0 removed.
  [ "$(printf '%s\n' "$VERSION" 4.3 | sort -V | head -1)" = 4.3 ] || asyncio="pytest-asyncio<1"
  "$BASE" -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q -r requirements.txt "${pins[@]}" "channels-redis==$VERSION" \
    cryptography async-timeout pytest "$asyncio" pytest-timeout
fi

# Private Redis and Sentinel (monitoring it, with the password the sentinel tests use).
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(port); SENTINEL_PORT=$(port)
RUN=$(mktemp -d)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$RUN/redis.pid" --dir "$RUN" --logfile "$RUN/redis.log"
cat > "$RUN/sentinel.conf" <<CONF
port $SENTINEL_PORT
bind 127.0.0.1
daemonize yes
pidfile $RUN/sentinel.pid
logfile $RUN/sentinel.log
dir $RUN
requirepass channels_redis
sentinel monitor sentinel 127.0.0.1 $REDIS_PORT 1
CONF
redis-server "$RUN/sentinel.conf" --sentinel
cleanup() {
  for pid in "$RUN/sentinel.pid" "$RUN/redis.pid"; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The suite hard-codes localhost:6379 and :26379: a copy points at the private servers.
rm -rf "$WORK/tests" && cp -r "$WORK/src/tests" "$WORK/tests"
sed -i -e "s/localhost:6379/localhost:$REDIS_PORT/g" -e "s/(\"localhost\", 26379)/(\"localhost\", $SENTINEL_PORT)/g" "$WORK"/tests/*.py
cp "$WORK/src/setup.cfg" "$WORK/setup.cfg"
# wsmonitor's classes replace the upstream names the test modules import.
cat > "$WORK/tests/conftest.py" <<'PYCONF'
import os

if os.environ.get("WSM_UPSTREAM_TARGET") == "wsmonitor":
    import channels_redis.core
    import channels_redis.pubsub

    from wsmonitor import layers, layers_redis

    # A switched-off backend is the upstream class under another name: it must not pass as ours.
    if layers_redis.PROBLEM is not None:
        raise SystemExit(f"wsmonitor's Redis layers are switched off: {layers_redis.PROBLEM}")
    channels_redis.core.RedisChannelLayer = layers.RedisChannelLayer
    channels_redis.pubsub.RedisPubSubChannelLayer = layers.RedisPubSubChannelLayer


def pytest_report_header(config):
    import channels_redis.core
    import channels_redis.pubsub

    return [f"layers under test: {channels_redis.core.RedisChannelLayer.__module__}."
            f"{channels_redis.core.RedisChannelLayer.__qualname__}, "
            f"{channels_redis.pubsub.RedisPubSubChannelLayer.__module__}."
            f"{channels_redis.pubsub.RedisPubSubChannelLayer.__qualname__}"]
PYCONF

run() {  # target, junit file
  (cd "$WORK" && WSM_UPSTREAM_TARGET=$1 PYTHONPATH=$ROOT "$WORK/venv/bin/python" -m pytest tests \
     -q -p no:cacheprovider -o junit_family=xunit1 --junitxml="$WORK/$1.xml" >"$WORK/$1.log" 2>&1) || true
  tail -1 "$WORK/$1.log"
}
echo "baseline (channels_redis $VERSION):"; run upstream
echo "wsmonitor:"; run wsmonitor
"$PY" - "$WORK/upstream.xml" "$WORK/wsmonitor.xml" <<'PYCHECK'
import sys
import xml.etree.ElementTree as ET

def passed(path):
    try:
        cases = list(ET.parse(path).iter("testcase"))
    except (OSError, ET.ParseError) as exc:
        sys.exit(f"{path}: no test report ({exc}); see the .log beside it")
    out = {}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        out[name] = not any(child.tag in ("failure", "error", "skipped") for child in case)
    return out

base, ours = passed(sys.argv[1]), passed(sys.argv[2])
if not any(base.values()):
    sys.exit("the baseline passed nothing: the suite did not run")
# The sentinel tests need the private Sentinel above: missing, failing or skipped on the
# baseline means the set-up is broken, and "ours fails nothing the baseline passes" is hollow.
sentinel = [name for name in base if "sentinel" in name]
if not sentinel:
    sys.exit("no sentinel test ran on the baseline")
if not all(base[name] for name in sentinel):
    sys.exit("sentinel tests fail or skip on the baseline: "
             + ", ".join(name for name in sentinel if not base[name]))
worse = sorted(name for name, ok in base.items() if ok and not ours.get(name, False))
print(f"{sum(base.values())} of {len(base)} pass on the baseline "
      f"({sum(base[n] for n in sentinel)} of {len(sentinel)} sentinel), "
      f"{sum(ours.values())} of {len(ours)} with wsmonitor's classes")
if worse:
    sys.exit("wsmonitor fails what the baseline passes:\n  " + "\n  ".join(worse))
PYCHECK
