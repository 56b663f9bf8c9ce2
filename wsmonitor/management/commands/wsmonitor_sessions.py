"""List the open WebSocket sessions of every node, or close one by session ID."""

import json
import time

from django.core.management.base import BaseCommand, CommandError

from wsmonitor import registry
from wsmonitor.conf import get_config
from wsmonitor.console import closing


class Command(BaseCommand):
    help = "List open WebSocket sessions (all nodes) or close one: needs WSMONITOR['REGISTRY_URL']."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="List open sessions, oldest first.")
        listing.add_argument("--node", help="Only this node's sessions.")
        listing.add_argument("--json", action="store_true",
                             help='One JSON document: {"sessions": [...], "count": N}.')
        close = sub.add_parser("close", help="Close one session with a close code.")
        close.add_argument("session_id")
        close.add_argument("--code", type=int, default=1000,
                           help="Close code: 1000 or 3000-4999 (default 1000).")
        close.add_argument("--reason", default="",
                           help="Why, for the logs of the node that holds the socket "
                                "(the client receives the code only).")
        close.add_argument("--timeout", type=float, default=5.0,
                           help="Seconds to wait for the session to leave the registry (0: don't).")

    def handle(self, *args, action, **options):
        if not get_config()["REGISTRY_URL"]:
            raise CommandError('The session registry is off: set WSMONITOR["REGISTRY_URL"].')
        if action == "list":
            self.list(options["node"], options["json"])
        else:
            self.close(options["session_id"], options["code"], options["timeout"],
                       options["reason"])

    def list(self, node, as_json):
        now = time.time()
        sessions = [s for s in registry.list_sessions() if node is None or s["node"] == node]
        if as_json:
            self.stdout.write(json.dumps({"sessions": sessions, "count": len(sessions)}))
            return
        rows = [("SESSION", "NODE", "PID", "CONSUMER", "PATH", "OPENED (UTC)", "AGE")]
        for s in sessions:
            opened = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["opened_at"]))
            rows.append((s["session_id"], s["node"], str(s["pid"]), s["consumer"],
                         s["path"] or "", opened, f"{max(0, now - s['opened_at']):.0f}s"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
        self.stdout.write(f"{len(sessions)} session(s)")

    def close(self, session_id, code, timeout, reason=""):
        if not registry.valid_close_code(code):
            raise CommandError(f"--code {code}: an application can only close with 1000 "
                               "or 3000-4999.")
        entry = registry.find_session(session_id)
        if entry is None:
            raise CommandError(f"No open session {session_id} in the registry.")
        try:
            # Recorded as closed_by "command" on the node that holds the socket.
            closing.request_close(entry, code, by="command", reason=reason)
        except ValueError as exc:
            raise CommandError(f"Cannot close {session_id}: {exc}.") from exc
        where = f"on {entry['node']} (pid {entry['pid']})"
        deadline = time.monotonic() + timeout
        while timeout > 0:
            if registry.find_session(session_id) is None:
                self.stdout.write(f"Closed {session_id} {where} with code {code}.")
                return
            if time.monotonic() > deadline:
                raise CommandError(f"Asked {session_id} {where} to close with code {code}, "
                                   f"but it is still registered after {timeout:g}s.")
            time.sleep(0.1)
        self.stdout.write(f"Asked {session_id} {where} to close with code {code}.")
