#!/usr/bin/env bash
# The version matrix: the fast, server-less suite in one virtualenv per end of the supported
# version ranges (scripts/matrix/oldest.txt, newest.txt). Each virtualenv is kept under
# .venv-matrix-<end>-<hash of its pins>/ and rebuilt only when the pins change. At the oldest
# end the channel-layer tests that need Redis (127.0.0.1:6379) run as well.
# Usage: bash scripts/matrix.sh [oldest] [newest]; extra pytest arguments after "--".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
ends=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ends+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#ends[@]} -gt 0 ] || ends=(oldest newest)

for end in "${ends[@]}"; do
  pins=scripts/matrix/$end.txt
  key=$(cat scripts/matrix/tools.txt "$pins" | sha256sum | cut -c1-12)
  venv=.venv-matrix-$end-$key
  if [ ! -f "$venv/.complete" ]; then
    rm -rf .venv-matrix-"$end"-*
    "$PYTHON" -m venv "$venv"
    # The pins are constraints too, so the tools cannot pull a library past its pin.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r scripts/matrix/tools.txt -r "$pins" -c "$pins"
    touch "$venv/.complete"
  fi
  echo "== $end: $(grep -v '^#' "$pins" | tr '\n' ' ')"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not server and not redis and not browser" "$@"
  if [ "$end" = oldest ]; then
    # wsmonitor's Redis layers rely on channels_redis internals (layers_redis.TESTED): their
    # Redis tests run at the oldest end too (the whole suite covers the newest), ~30 s.
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "redis and not server" \
      tests/test_layers.py tests/test_layer_dropin.py tests/test_layer_losses.py
  fi
done
