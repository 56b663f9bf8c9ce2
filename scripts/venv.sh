# Sourced by demo.sh and test.sh: create .venv and install requirements.txt when it changed.
# The newest tested pins (scripts/matrix/newest.txt) are constraints, so a library's release
# after them cannot reach the suite before its pins are raised, and the stamp covers them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || {
    echo "python3 -m venv failed: on Debian, install it with: apt-get install -y python3-venv" >&2
    exit 1
  }
fi
inputs=(requirements.txt scripts/matrix/newest.txt scripts/venv.sh)
stamp=.venv/.requirements.sha256
# Compared whole, so a stamp that lacks one of the inputs counts as changed too.
if [ "$(sha256sum "${inputs[@]}")" != "$(cat "$stamp" 2>/dev/null)" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r requirements.txt -c scripts/matrix/newest.txt
  sha256sum "${inputs[@]}" > "$stamp"
fi
