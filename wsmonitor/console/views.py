"""The console's pages, JSON endpoints and close actions.

Viewing needs an active staff user with ``wsmonitor.view_console``; closing also needs
``wsmonitor.close_sessions``. Anyone else is sent to the login page (not logged in) or
gets 403, and no data.
"""

import math
import re
import time
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from .. import registry
from ..conf import get_config
from ..logging import logger
from . import charts, closing
from .snapshot import get_publisher, timing
from .store import FILTERS, filter_sessions, freshness, source

VIEW_PERMISSION = "wsmonitor.view_console"
CLOSE_PERMISSION = "wsmonitor.close_sessions"
PARTS = ("fleet", "sessions", "closed")
CLOSED_PAGE = 100
#: Processes per page of the fleet table: with full 15-minute rings, the page stays under
#: 200 KB with a full page of sessions and of recent closes.
FLEET_PAGE = 6
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: Entry fields a client controls: shown with control characters made visible.
CLIENT_TEXT = ("path", "user_agent", "user", "subprotocol", "requested_subprotocols", "client",
               "consumer")


def can_view(user):
    return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))


def can_close(user):
    return can_view(user) and user.has_perm(CLOSE_PERMISSION)


def _guard(check, api=False):
    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            user = getattr(request, "user", None)
            if user is None or not user.is_authenticated:
                if api or request.method != "GET":
                    return JsonResponse({"error": "log in first"}, status=403)
                return redirect_to_login(request.get_full_path())
            if not check(user):
                if api:
                    return JsonResponse({"error": "permission denied"}, status=403)
                return HttpResponseForbidden(
                    "wsmonitor console: your account lacks the permission for this.\n",
                    content_type="text/plain")
            return view(request, *args, **kwargs)
        return never_cache(wrapped)
    return decorator


# --- Shaping what the templates and the JSON show -------------------------------------------

def _visible(value):
    """Control characters as escapes: a client's string is shown as text, never obeyed."""
    if isinstance(value, str) and _CONTROL.search(value):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


def _display(entry, now, me, viewer_can_close=False):
    shown = dict(entry)
    for key in CLIENT_TEXT:
        shown[key] = _visible(shown.get(key))
    shown["age"] = _duration(now - entry["opened_at"])
    if "closed_at" not in entry:
        route, why = closing.reach(entry, me)
        shown["route"], shown["why_not"] = route, why
        shown["can_close"] = viewer_can_close and route is not None
    else:
        shown["closed_ago"] = _duration(now - entry["closed_at"])
        shown["duration_text"] = _duration(entry.get("duration") or 0)
    groups = entry.get("groups")
    if groups:
        expiry = _group_expiry(entry.get("layer"))
        shown["groups"] = [{"name": _visible(name), "age": _duration(now - joined),
                            "expires_in": None if expiry is None else
                            _duration(joined + expiry - now)} for name, joined in groups]
    return shown


def _group_expiry(alias):
    from django.conf import settings

    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    config = (layers.get(alias or "default") or {}).get("CONFIG") or {}
    return config.get("group_expiry", 86400)


def _duration(seconds):
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def _filters(request):
    return {key: request.GET.get(key, "").strip()[:200] for key in FILTERS}


def _page(request, name="page"):
    try:
        return max(1, int(request.GET.get(name, "1")))
    except ValueError:
        return 1


def _fleet(src, config, now, documents=None):
    documents = sorted(src.processes(), key=lambda d: (d["node"], d["pid"])) \
        if documents is None else documents
    series = src.series(documents)
    # One time axis for every row, from the oldest point kept (at most CONSOLE_HISTORY ago).
    oldest = min((points[0]["t"] for points in series.values() if points), default=now)
    t0 = max(now - config["CONSOLE_HISTORY"], min(oldest, now - 60))
    rows = []
    for document in documents:
        row = charts.fleet_row(document, series.get(document["process"], []), now, t0)
        row["age"], row["state"] = freshness(document, now, config)
        row["age_text"] = f"{row['age']:.0f}s"
        rows.append(row)
    return rows


def _fleet_page(src, request, config, now):
    """A page of FLEET_PAGE processes: each row's charts weigh about 14 KB."""
    documents = sorted(src.processes(), key=lambda d: (d["node"], d["pid"]))
    pages = max(1, math.ceil(len(documents) / FLEET_PAGE))
    page = min(_page(request, "fleet_page"), pages)
    shown = documents[(page - 1) * FLEET_PAGE:page * FLEET_PAGE]
    return {"fleet": _fleet(src, config, now, shown), "fleet_page": page, "fleet_pages": pages,
            "fleet_total": len(documents), "scope_note": _scope_note(src, documents)}


def _scope_note(src, documents):
    """What the page cannot see, said plainly."""
    if src.shared:
        return None
    if any(d.get("multiprocess") for d in documents):
        return ("This page shows one server process of several: the session registry is off "
                '(WSMONITOR["REGISTRY_URL"]), so each process sees only its own sockets.')
    return ('The session registry is off (WSMONITOR["REGISTRY_URL"]): this page shows the '
            "process that serves it.")


def _sessions_page(src, request, now, me, closer, html=True):
    config = get_config()
    filters = _filters(request)
    everything = src.index()
    matching = filter_sessions(everything, filters)
    size = config["CONSOLE_PAGE_SIZE"]
    pages = max(1, math.ceil(len(matching) / size))
    page = min(_page(request), pages)
    chosen = src.entries(matching[(page - 1) * size:page * size])
    if html:
        shown = [_display(s, now, me, closer) for s in chosen]
    else:  # JSON: the strings exactly as the client sent them (JSON escapes them)
        shown = [{**s, **dict(zip(("route", "why_not"), closing.reach(s, me), strict=True))}
                 for s in chosen]
    return {
        "sessions": shown, "total": len(matching), "all": len(everything), "page": page,
        "pages": pages, "filters": filters,
        "consumers": sorted({s["consumer"] for s in everything if s.get("consumer")}),
        "nodes": sorted({s["node"] for s in everything}),
        "users_known": any(s.get("user") is not None for s in everything),
    }


def _closed_page(src, request, now, me):
    closed = src.closed()
    node = request.GET.get("node", "").strip()
    if node:
        closed = [c for c in closed if c.get("node") == node]
    pages = max(1, math.ceil(len(closed) / CLOSED_PAGE))
    page = min(_page(request, "closed_page"), pages)
    return {"closed": [_display(c, now, me) for c in
                       closed[(page - 1) * CLOSED_PAGE:page * CLOSED_PAGE]],
            "closed_total": len(closed), "closed_page": page, "closed_pages": pages}


def _query(request, **changes):
    query = request.GET.copy()
    query.pop("part", None)
    for key, value in changes.items():
        query[key] = value
    return query.urlencode()


# --- Pages ------------------------------------------------------------------------------------

@require_GET
@_guard(can_view)
def index(request):
    """Fleet, sessions and recent closes; ``?part=`` returns one section for live updates."""
    config = get_config()
    now = time.time()
    me = get_publisher().process
    closer = can_close(request.user)
    part = request.GET.get("part")
    src = source()
    try:
        context = {"interval": config["CONSOLE_INTERVAL"], "can_close": closer,
                   "drain_code": config["CONSOLE_DRAIN_CODE"], "now": now}
        if part in (None, "fleet"):
            context.update(_fleet_page(src, request, config, now))
            context["fleet_prev_query"] = _query(request, fleet_page=context["fleet_page"] - 1)
            context["fleet_next_query"] = _query(request, fleet_page=context["fleet_page"] + 1)
        if part in (None, "sessions"):
            context.update(_sessions_page(src, request, now, me, closer))
            context["prev_query"] = _query(request, page=context["page"] - 1)
            context["next_query"] = _query(request, page=context["page"] + 1)
        if part in (None, "closed"):
            context.update(_closed_page(src, request, now, me))
            context["closed_prev_query"] = _query(request, closed_page=context["closed_page"] - 1)
            context["closed_next_query"] = _query(request, closed_page=context["closed_page"] + 1)
    finally:
        src.close()
    if part in PARTS:
        return render(request, f"wsmonitor/console/_{part}.html", context)
    return render(request, "wsmonitor/console/index.html", context)


@require_GET
@_guard(can_view)
def session(request, session_id):
    """One session, open or recently closed, with its trace link and the close form."""
    config = get_config()
    now = time.time()
    me = get_publisher().process
    src = source()
    try:
        entry = src.session(session_id)
        if entry is None:
            entry = next((c for c in src.closed() if c["session_id"] == session_id), None)
    finally:
        src.close()
    if entry is None:
        raise Http404("no such session, open or recently closed")
    shown = _display(entry, now, me, can_close(request.user))
    trace_url = None
    if entry.get("trace_id") and config["CONSOLE_TRACE_URL"]:
        trace_url = config["CONSOLE_TRACE_URL"].replace("{trace_id}", entry["trace_id"])
    return render(request, "wsmonitor/console/session.html", {
        "s": shown, "trace_url": trace_url, "closed": "closed_at" in entry,
        "message": request.GET.get("done", "")[:200], "error": request.GET.get("error", "")[:300],
        "tracing_on": config["TRACING"]})


def _code(request, default):
    try:
        code = int(request.POST.get("code", default))
    except (TypeError, ValueError):
        return None
    return code if registry.valid_close_code(code) else None


def _reason(request):
    """The staff user's reason: logged (bounded, control characters escaped), never sent."""
    return closing.clean_reason(request.POST.get("reason", ""))


def _back(name, *args, **query):
    from urllib.parse import urlencode

    return redirect(reverse(name, args=args) + ("?" + urlencode(query) if query else ""))


def _open_session(session_id):
    """The entry of one open session, from every node the console can read, or None."""
    src = source()
    try:
        return src.session(session_id)
    finally:
        src.close()


@require_POST
@csrf_protect
@_guard(can_close)
def close(request, session_id):
    """Close one session with the chosen code, after the confirmation box was ticked."""
    code = _code(request, 1000)
    if code is None:
        return _back("wsmonitor-console-session", session_id,
                     error="The close code must be 1000 or 3000-4999: servers refuse others.")
    if request.POST.get("confirm") != "yes":
        return _back("wsmonitor-console-session", session_id,
                     error="Tick the confirmation box to close the session.")
    entry = _open_session(session_id)
    if entry is None:
        return _back("wsmonitor-console-session", session_id,
                     error="The session is not open any more.")
    me = get_publisher().process
    route, why = closing.reach(entry, me)
    if route is None:
        return _back("wsmonitor-console-session", session_id, error=f"Cannot close: {why}.")
    reason = _reason(request)
    done = closing.close(entry, code, route, reason)
    if get_config()["LOGS"]:
        logger.info("ws_console_close", staff_user=request.user.get_username(),
                    target_session_id=session_id, code=code, reason=reason,
                    node=entry["node"], pid=entry["pid"], route=route, sent=done)
    if not done:
        return _back("wsmonitor-console-session", session_id,
                     error="The session closed before the request reached it.")
    return _back("wsmonitor-console-session", session_id,
                 done=f"Close with code {code} sent ({route}).")


@require_POST
@csrf_protect
@_guard(can_close)
def drain(request, process):
    """Close every session of one process that the console can reach (before a deploy)."""
    config = get_config()
    code = _code(request, config["CONSOLE_DRAIN_CODE"])
    if code is None or request.POST.get("confirm") != "yes":
        return JsonResponse({"error": "a valid code and confirm=yes are required"}, status=400)
    me = get_publisher().process
    src = source()
    try:
        entries = src.sessions_of(process)
    finally:
        src.close()
    reason = _reason(request)
    sent, skipped = closing.close_many(entries, code, me, reason)
    if config["LOGS"]:
        logger.info("ws_console_drain", staff_user=request.user.get_username(), process=process,
                    code=code, reason=reason, sent=sent, skipped=skipped)
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"sent": sent, "skipped": skipped, "code": code})
    return redirect(reverse("wsmonitor-console") + f"?drained={sent}&skipped={skipped}")


# --- JSON -------------------------------------------------------------------------------------

def _json_row(row):
    document = row["document"]
    return {
        "process": document["process"], "node": document["node"], "pid": document["pid"],
        "age": round(row["age"], 3), "state": row["state"], "active": document["active"],
        "multiprocess": document.get("multiprocess", False),
        "last": {c["label"]: {line["name"]: line["last"] for line in c["lines"]}
                 for c in row["charts"]},
        "close_codes": {m["code"]: m["count"] for m in row["codes"]},
    }


@require_GET
@_guard(can_view, api=True)
def api_fleet(request):
    config = get_config()
    now = time.time()
    src = source()
    try:
        rows = _fleet(src, config, now)
        note = _scope_note(src, [r["document"] for r in rows])
    finally:
        src.close()
    interval, stale_after, gone_after = timing(config)
    return JsonResponse({"processes": [_json_row(r) for r in rows], "note": note,
                         "interval": interval, "stale_after": stale_after,
                         "gone_after": gone_after})


@require_GET
@_guard(can_view, api=True)
def api_sessions(request):
    now = time.time()
    me = get_publisher().process
    src = source()
    try:
        page = _sessions_page(src, request, now, me, can_close(request.user), html=False)
    finally:
        src.close()
    return JsonResponse({key: page[key] for key in
                         ("sessions", "total", "all", "page", "pages", "filters")})


@require_GET
@_guard(can_view, api=True)
def api_closed(request):
    now = time.time()
    src = source()
    try:
        page = _closed_page(src, request, now, get_publisher().process)
    finally:
        src.close()
    return JsonResponse(page)


@require_GET
@_guard(can_view, api=True)
def api_session(request, session_id):
    entry = _open_session(session_id)
    if entry is None:
        return JsonResponse({"error": "no such open session"}, status=404)
    route, why = closing.reach(entry, get_publisher().process)
    return JsonResponse({**entry, "route": route, "why_not": why})
