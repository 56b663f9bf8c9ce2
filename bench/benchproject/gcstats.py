"""Time this process spends in the garbage collector, per generation, served at /gc/.

The runner reads it before and after each echo burst: a variant that keeps more objects alive
makes every full collection walk more of them, a cost no per-message profile shows.
"""

import gc
import json
from time import perf_counter

from django.http import HttpResponse

_COUNTS = [0, 0, 0]
_SECONDS = [0.0, 0.0, 0.0]
_started = [0.0]


def _track(phase, info):
    if phase == "start":
        _started[0] = perf_counter()
    else:
        generation = info["generation"]
        _COUNTS[generation] += 1
        _SECONDS[generation] += perf_counter() - _started[0]


gc.callbacks.append(_track)


def view(request):
    return HttpResponse(json.dumps({
        "collections": _COUNTS, "seconds": _SECONDS,
        "tracked_objects": len(gc.get_objects()),
        "frozen_objects": gc.get_freeze_count(),
    }), content_type="application/json")
