"""The fleet's figures and their charts: rates from counter samples, drawn as SVG polylines."""

import math

WIDTH, HEIGHT = 160, 32
#: Seconds of heartbeat round trips each RTT percentile point is computed over.
RTT_WINDOW = 60.0


def rates(points, key, per=1.0):
    """``[(t, rate)]`` between consecutive samples of a cumulative counter (per ``per`` s)."""
    out = []
    for before, after in zip(points, points[1:]):
        dt = after["t"] - before["t"]
        if dt > 0:
            out.append((after["t"], max(0.0, after[key] - before[key]) / dt * per))
    return out


def gauge(points, key):
    return [(p["t"], p[key]) for p in points]


def quantile(q, buckets):
    """``histogram_quantile`` over ``{le: cumulative count}``, linear within a bucket."""
    bounds = sorted((math.inf if le == "+Inf" else float(le), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: its value, like Prometheus
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def rtt_quantiles(points, q, window=RTT_WINDOW):
    """``[(t, seconds)]``: the q-quantile of the round trips observed in the last ``window`` s."""
    out = []
    start = 0
    for i, point in enumerate(points):
        while start < i and points[start]["t"] < point["t"] - window:
            start += 1
        base = points[start] if start < i else None
        if base is None:
            continue
        delta = {le: n - base["rtt"].get(le, 0) for le, n in point["rtt"].items()}
        value = quantile(q, delta)
        if value is not None:
            out.append((point["t"], value))
    return out


def thin(values, t0, t1):
    """At most two points per pixel column, the column's lowest and highest in time order.

    A chart is WIDTH pixels wide: more points draw nothing more, yet a 15-minute ring at a
    short ``CONSOLE_INTERVAL`` holds thousands and every one would be sent with the page.
    Keeping each column's extremes draws the same picture: no spike or dip is lost.
    """
    if len(values) <= 2 * WIDTH or t1 <= t0:
        return values
    scale = WIDTH / (t1 - t0)
    out, column, members = [], None, []
    for point in values:
        index = int((point[0] - t0) * scale)
        if index != column and members:
            out.extend(_extremes(members))
            members = []
        column = index
        members.append(point)
    out.extend(_extremes(members))
    return out


def _extremes(members):
    if len(members) <= 2:
        return members
    low = min(members, key=lambda p: p[1])
    high = max(members, key=lambda p: p[1])
    return sorted({low, high}, key=lambda p: p[0])


def polyline(values, t0, t1, top):
    """SVG ``points`` for ``values`` on [t0, t1] x [0, top]."""
    if not values or t1 <= t0:
        return ""
    top = top or 1.0
    coords = []
    for t, v in thin(values, t0, t1):
        x = (t - t0) / (t1 - t0) * WIDTH
        y = HEIGHT - 1 - min(v, top) / top * (HEIGHT - 2)
        # Whole pixels: the chart is drawn at its viewBox size, and a page carries every digit.
        coord = f"{max(0, round(x))},{round(y)}"
        if not coords or coords[-1] != coord:
            coords.append(coord)
    return " ".join(coords)


def chart(label, lines, t0, t1, unit="", digits=1):
    """One small chart: its lines share the y scale; the caption gives each line's last value."""
    top = max((v for values in lines.values() for _, v in values), default=0.0)
    drawn = []
    for name, values in lines.items():
        last = values[-1][1] if values else None
        drawn.append({"name": name, "points": polyline(values, t0, t1, top * 1.1),
                      "last": None if last is None else _fmt(last, digits, unit)})
    return {"label": label, "lines": drawn, "top": _fmt(top, digits, unit),
            "width": WIDTH, "height": HEIGHT}


def _fmt(value, digits, unit):
    if unit == "ms":
        return f"{value * 1000:.{digits}f} ms"
    return f"{value:.{digits}f}{unit}"


CODE_CLASSES = {"1000": "ok", "1001": "away", "1005": "away", "1006": "abnormal",
                "1011": "error", "4408": "heartbeat"}


def code_mix(points):
    """Closes by code label over the ring: ``[{code, count, percent, css}]``, largest first."""
    if not points:
        return []
    first, last = points[0]["codes"], points[-1]["codes"]
    counts = {code: n - first.get(code, 0) for code, n in last.items()}
    if len(points) == 1:
        counts = dict(last)
    total = sum(n for n in counts.values() if n > 0)
    mix = [{"code": code, "count": int(n), "percent": round(100.0 * n / total, 1),
            "css": CODE_CLASSES.get(code, "app")}
           for code, n in counts.items() if n > 0]
    return sorted(mix, key=lambda m: -m["count"])


def fleet_row(document, points, now, t0):
    """Everything the fleet table shows for one process; every row's x axis spans [t0, now]."""
    t1 = now
    charts = [
        chart("active", {"active": gauge(points, "active")}, t0, t1, digits=0),
        chart("connects/min", {"connects": rates(points, "connects", 60)}, t0, t1),
        chart("closes/min", {"closes": rates(points, "closes", 60)}, t0, t1),
        chart("messages/s", {"in": rates(points, "in"), "out": rates(points, "out")}, t0, t1),
        chart("heartbeat RTT", {"p50": rtt_quantiles(points, 0.5),
                                "p99": rtt_quantiles(points, 0.99)}, t0, t1, unit="ms"),
        chart("errors/min", {"errors": rates(points, "errors", 60)}, t0, t1),
    ]
    return {"document": document, "charts": charts, "codes": code_mix(points)}
