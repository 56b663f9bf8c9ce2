#!/usr/bin/env bash
# Run the demo on http://127.0.0.1:8000 (in-memory channel layer and SQLite unless REDIS_URL is set).
source "$(dirname "$0")/venv.sh"
.venv/bin/python manage.py migrate --noinput
exec .venv/bin/daphne -b 127.0.0.1 -p "${PORT:-8000}" demo_project.asgi:application
