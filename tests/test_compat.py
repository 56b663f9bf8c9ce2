"""wsmonitor.compat: the private internals of other libraries, read in one guarded place."""

import logging

import pytest
from django.core.checks import run_checks
from prometheus_client import CollectorRegistry, Histogram

from wsmonitor import compat


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(compat, "_warned", set())
    monkeypatch.setattr(compat, "_histogram_ok", None)


@pytest.mark.parametrize("version, problem", [
    ("4.0", None), ("4.3.2", None), ("4.3.99", None), ("4.3rc1", None),
    ("3.0.5", "older"), ("4.4.0", "newer"), ("5.0", "newer"), ("4.4.0.dev1", "newer"),
])
def test_versions_outside_the_tested_range_are_named(version, problem):
    sentence = compat.version_problem("channels", version, ("4.0", "4.3"))
    if problem is None:
        assert sentence is None
    else:
        assert problem in sentence and version in sentence and "channels" in sentence


def test_installed_versions_are_within_the_tested_range():
    # The environment the suite runs in is one of the tested ones (CI's matrix runs it at
    # both ends of every range), so a range that lags behind requirements fails here.
    assert compat.startup_problems() == []


def test_the_tested_ranges_are_the_matrix_pins():
    # scripts/matrix.sh runs the fast suite on exactly these versions.
    from .conftest import ROOT

    def pins(end):
        lines = (ROOT / "scripts" / "matrix" / f"{end}.txt").read_text().splitlines()
        return dict(line.split("==") for line in lines if line and not line.startswith("#"))

    oldest, newest = pins("oldest"), pins("newest")
    for distribution, (low, high) in compat.TESTED.items():
        assert compat._release(oldest[distribution]) == compat._release(low), distribution
        assert newest[distribution].startswith(high + "."), distribution


def test_a_version_outside_the_range_is_a_system_check_warning(monkeypatch):
    monkeypatch.setitem(compat.TESTED, "Django", ("1.0", "1.0"))
    (warning,) = [m for m in run_checks()
                  if m.id == "wsmonitor.W004" and m.msg.startswith("Django ")]
    assert "newer than the newest" in warning.msg and "(1.0.x)" in warning.msg


def test_the_histogram_observer_exports_exactly_what_observe_would(fresh_warnings, caplog):
    registry = CollectorRegistry()
    ours = Histogram("ours", "x", buckets=(0.1, 1, 10), registry=registry)
    theirs = Histogram("theirs", "x", buckets=(0.1, 1, 10), registry=registry)
    with caplog.at_level(logging.WARNING, logger="wsmonitor"):
        observe = compat.histogram_observer(ours)
    assert observe != ours.observe and not caplog.records
    for amount in (0, 0.1, 0.10001, 1, 5, 10, 11, 1e9):
        observe(amount)
        theirs.observe(amount)

    def exported(histogram, prefix):
        return sorted((s.name[len(prefix):], tuple(s.labels.items()), s.value)
                      for s in histogram.collect()[0].samples if "created" not in s.name)

    assert exported(ours, "ours") == exported(theirs, "theirs")


def test_unexpected_histogram_internals_fall_back_to_observe_loudly_once(fresh_warnings,
                                                                         caplog):
    class Renamed:
        def observe(self, amount):
            pass

    child = Renamed()
    with caplog.at_level(logging.WARNING, logger="wsmonitor"):
        assert compat.histogram_observer(child) == child.observe
        assert compat.histogram_observer(Renamed()) is not None
    lines = [r.getMessage() for r in caplog.records if "prometheus-client" in r.getMessage()]
    assert len(lines) == 1 and "switched off" in lines[0] and "observe() is used" in lines[0]


def test_a_failing_self_check_switches_the_fast_path_off(fresh_warnings, monkeypatch, caplog):
    monkeypatch.setattr(compat, "_histograms_work", lambda: False)
    child = Histogram("probe_off", "x", registry=CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="wsmonitor"):
        assert compat.histogram_observer(child) == child.observe
    assert any("did not export what observe() does" in r.getMessage() for r in caplog.records)


def test_twisted_pending_bytes_follow_a_real_transport(fresh_warnings):
    pytest.importorskip("twisted")
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.testing import MemoryReactor

    class Transport(FileDescriptor):
        accepted = 0

        def writeSomeData(self, data):
            return min(len(data), self.accepted)

    transport = Transport(reactor=MemoryReactor())
    transport.connected = True
    assert compat.twisted_pending_bytes(transport) == 0
    transport.write(b"x" * 1000)
    transport.write(b"y" * 500)
    assert compat.twisted_pending_bytes(transport) == 1500
    transport.accepted = 600  # the kernel takes 600 bytes
    transport.doWrite()
    assert compat.twisted_pending_bytes(transport) == 900


def test_an_unexpected_transport_turns_the_backlog_off_loudly(fresh_warnings, caplog):
    class NotTwisted:
        dataBuffer = b""

    with caplog.at_level(logging.WARNING, logger="wsmonitor"):
        assert compat.twisted_pending_bytes(NotTwisted()) is None
        assert compat.twisted_pending_bytes(NotTwisted()) is None
    lines = [r.getMessage() for r in caplog.records if "Twisted" in r.getMessage()]
    assert len(lines) == 1 and "ws_send_backlog" in lines[0]


def test_group_names_are_checked_the_way_channels_checks_them():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    assert compat.require_valid_group_name(layer, "chat.room-1_a")
    for bad in ("bad name", "x" * 100, "émoji"):
        with pytest.raises(TypeError):
            compat.require_valid_group_name(layer, bad)


def test_the_app_logs_versions_outside_the_range_at_start_up():
    # daphne never runs system checks: ready() says it where the server logs.
    import subprocess
    import sys

    from .conftest import ROOT

    code = ("import os, django\n"
            "from wsmonitor import compat\n"
            "compat.TESTED['Django'] = ('1.0', '1.0')\n"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'\n"
            "django.setup()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "wsmonitor.W004" in line]
    assert len(lines) == 1 and "Django" in lines[0] and "newer than the newest" in lines[0]


def test_channels_dispatch_is_inlined_only_as_tested(monkeypatch):
    from channels.consumer import AsyncConsumer

    assert compat.channels_dispatch_inlinable(AsyncConsumer.dispatch)

    async def other(self, message):
        return None

    assert not compat.channels_dispatch_inlinable(other)
    monkeypatch.setattr(compat, "installed_version", lambda name: "9.0")
    assert not compat.channels_dispatch_inlinable(AsyncConsumer.dispatch)
