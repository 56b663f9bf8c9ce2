"""The feature interface: what plugs into a connection's lifecycle.

A feature (the heartbeat, the session registry, the saturation sampler, ...) is
an object with a ``name``, the consumer ``kinds`` it supports (required:
:func:`register` refuses a feature that does not say) and three hooks that
:class:`wsmonitor.connection.Connection` calls:

* ``opened(conn)``: the accept went out. A feature that must see received
  messages calls ``conn.add_absorber(fn)`` here: ``fn(message)`` runs before
  the application for each ``websocket.receive`` and returns True to swallow it.
* ``closed(conn)``: exactly once, on every path out, for each connection that
  ``opened`` ran for; ``conn.code`` and ``conn.closed_by`` are final by then.
* ``options(cls)``: at class definition, the feature's part of an instrumented
  consumer's ``wsmonitor_*`` attributes, validated (raise ``ImproperlyConfigured``
  saying what to do), or None when the class leaves the feature off. What it
  returns is ``conn.options[feature.name]``.

Per-connection state lives in ``conn.state[feature.name]``; each feature owns its
instruments in its own module. Hooks never break a connection: an exception in
one is logged (``ws_feature_error``) and the connection goes on; an absorber
that raises lets the message through to the application.

    from wsmonitor import features

    class Audit(features.Feature):
        name = "audit"
        kinds = features.KINDS

        def opened(self, conn):
            audit_log.info("open %s %s", conn.session_id, conn.label)

    features.register(Audit())
"""

from django.core.exceptions import ImproperlyConfigured

from .logging import logger

#: Consumer kinds: wsmonitor's async and sync consumers, and third-party
#: applications seen only through :class:`wsmonitor.WSMonitorMiddleware`.
KINDS = frozenset({"async", "sync", "middleware"})


class Feature:
    """Base class of lifecycle features; every hook is optional."""

    #: Unique name: the key of ``conn.options`` and ``conn.state``.
    name = None
    #: The consumer kinds this feature works with (a subset of :data:`KINDS`), declared by
    #: every feature: ``register`` refuses one that leaves it out.
    kinds = None
    #: Says what to do when a class of an unsupported kind switches the feature on.
    unsupported_hint = ""

    def options(self, cls):
        """Validate ``cls``'s attributes for this feature; None leaves it off for that class."""
        return None

    def opened(self, conn):
        """The accept went out."""

    def closed(self, conn):
        """The connection ended (once, on every path out)."""


_features = []
#: Bumped on every (un)registration, so consumer classes know their options are stale.
generation = 0


def register(feature):
    """Plug ``feature`` into every connection opened from now on; returns it."""
    global generation
    kinds = feature.kinds
    if not feature.name or isinstance(kinds, str) or not kinds or not set(kinds) <= KINDS:
        raise ValueError(f"{type(feature).__qualname__} needs a name and the consumer kinds it "
                         f"supports: a non-empty set among {sorted(KINDS)}, e.g. "
                         "features.KINDS for all")
    unregister(feature.name)
    _features.append(feature)
    generation += 1
    return feature


def unregister(name):
    global generation
    for feature in list(_features):
        if feature.name == name:
            _features.remove(feature)
            generation += 1


def registered():
    """The registered features, in registration order."""
    return tuple(_features)


_by_kind = {}


def for_kind(kind):
    """The registered features that support ``kind``, in registration order: one tuple
    shared by every connection of that kind until features are (un)registered."""
    found = _by_kind.get(kind)
    if found is None or found[0] != generation:
        found = _by_kind[kind] = (generation, tuple(f for f in _features if kind in f.kinds))
    return found[1]


def absorber_failed(conn, absorb, exc):
    """An absorber raised on a received message: log it, then let this connection's messages
    through to the application as if nothing swallowed them (one log line per connection,
    not one per message)."""
    if conn.logs:
        logger.error("ws_feature_error", hook="absorb",
                     absorber=getattr(absorb, "__qualname__", repr(absorb)), exc_info=exc)

    def absorb_quietly(message):
        try:
            return absorb(message)
        except Exception:
            return False

    conn.absorb = absorb_quietly


def class_options(cls, kind):
    """``{feature name: options}`` of a consumer class; raises ImproperlyConfigured."""
    options = {}
    for feature in _features:
        value = feature.options(cls)
        if value is None:
            continue
        if kind not in feature.kinds:
            raise ImproperlyConfigured(
                f"{cls.__module__}.{cls.__qualname__} switches on wsmonitor's {feature.name} "
                f"feature, which does not support {kind} consumers. {feature.unsupported_hint}"
                .strip())
        options[feature.name] = value
    return options
