"""The demo project: one time zone in its logs; unreadable chat input answered, not fatal."""

import json
import subprocess
import sys

from .conftest import ROOT

LOCAL_TIME = """
import os, time, logging, json
os.environ["DJANGO_SETTINGS_MODULE"] = "demo_project.settings"
import django
django.setup()
record = logging.makeLogRecord({"msg": "x"})
print(json.dumps({"offset": time.localtime(record.created).tm_gmtoff,
                  "zone": time.strftime("%Z")}))
"""


def test_the_demo_logs_in_one_time_zone():
    # Django applies TIME_ZONE to the whole process (os.environ["TZ"]); anything stamped
    # with local time (asctime, daphne's access log) must agree with wsmonitor's UTC.
    env = {"PATH": "/usr/bin:/bin", "TZ": "America/New_York", "DEMO_DB": ":memory:"}
    out = subprocess.run([sys.executable, "-c", LOCAL_TIME], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == {"offset": 0, "zone": "UTC"}
