"""wsmonitor's channel-layer envelope: send time and W3C trace context, never in the message.

A layer message must reach every reader exactly as it was sent, so the
envelope travels beside it:

* on channels_redis's core layer, in the ``random_prefix_length`` bytes its
  serializer puts before every message and every reader strips unread (12 by
  default: room for the send time; 37 or more: the trace context too);
* in this process, in a small table keyed by the received message object,
  which wsmonitor's consumers read through :func:`take` and no other reader sees.
"""

import random
import time

from opentelemetry import trace

#: Prefix bytes that carry the send time; below this, channels_redis's random bytes stay.
TIME_PREFIX = 12
#: Prefix bytes that carry the send time and the sender's trace context.
TRACE_PREFIX = 37
_MAGIC_TIME = b"\xa7\x5e"
_MAGIC_TRACE = b"\xa7\x5f"
_PLAUSIBLE = 86400.0  # a send time further than this from now is random bytes, not ours

# id(message) -> [message, envelope, readers left]. The message is held so an id is
# never mistaken for another object's; entries readers never take are evicted oldest
# first past MAX_HELD (a plain reader of a wsmonitor layer never takes its entry).
MAX_HELD = 4096
_held = {}


def current():
    """The envelope of a message sent now: send time and the current trace context."""
    env = {"sent_at": time.time()}
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        env["traceparent"] = (f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                              f"{context.trace_flags:02x}")
        if context.trace_state:
            env["tracestate"] = context.trace_state.to_header()
    return env


def prefix(length):
    """``length`` prefix bytes carrying the envelope of a message sent now, the rest random.

    At least three random bytes remain after the envelope: with the send time to
    the microsecond they keep equal messages distinct in channels_redis's sorted sets.
    """
    sent_us = int(time.time() * 1_000_000).to_bytes(7, "big")
    context = trace.get_current_span().get_span_context()
    if length >= TRACE_PREFIX and context.is_valid:
        head = (_MAGIC_TRACE + sent_us + context.trace_id.to_bytes(16, "big")
                + context.span_id.to_bytes(8, "big") + bytes((context.trace_flags,)))
    else:
        head = _MAGIC_TIME + sent_us
    rest = length - len(head)
    return head + random.getrandbits(8 * rest).to_bytes(rest, "big")


def read_prefix(data, length):
    """The envelope in a serialized message's prefix, or None (random bytes: an upstream sender)."""
    if length < TIME_PREFIX:
        return None
    magic = data[:2]
    if magic != _MAGIC_TIME and magic != _MAGIC_TRACE:
        return None
    sent_at = int.from_bytes(data[2:9], "big") / 1_000_000
    if abs(sent_at - time.time()) > _PLAUSIBLE:
        return None
    env = {"sent_at": sent_at}
    if magic == _MAGIC_TRACE and length >= TRACE_PREFIX:
        env["traceparent"] = f"00-{data[9:25].hex()}-{data[25:33].hex()}-{data[33]:02x}"
    return env


def hold(message, env, readers=1):
    """Keep ``env`` for the reader(s) that will receive this very ``message`` object."""
    key = id(message)
    entry = _held.get(key)
    if entry is not None and entry[0] is message:
        entry[2] += readers
        return
    if len(_held) >= MAX_HELD:
        del _held[next(iter(_held))]
    _held[key] = [message, env, readers]


def take(message):
    """The envelope held for ``message``, or None; one reader's share is used up."""
    entry = _held.get(id(message))
    if entry is None or entry[0] is not message:
        return None
    entry[2] -= 1
    if entry[2] <= 0:
        del _held[id(message)]
    return entry[1]


def drop(message):
    """Forget ``message``'s envelope (the message itself was lost)."""
    entry = _held.get(id(message))
    if entry is not None and entry[0] is message:
        del _held[id(message)]
