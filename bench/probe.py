"""Check that one variant's ASGI application builds: ``python -m bench.probe VARIANT``.

Exit 0 and print ``ok``; exit 3 and print ``unavailable: REASON`` when the installed wsmonitor
lacks what the variant needs; any other failure exits 1 with its traceback.
"""

import os
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    os.environ["BENCH_VARIANT"] = argv[0]
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.benchproject.settings"
    from bench import variants

    try:
        variants.check(argv[0])
        import django

        django.setup(set_prefix=False)
        variants.check(argv[0])
        from django.conf import settings

        if "wsmonitor" in settings.INSTALLED_APPS:
            from wsmonitor import checks

            errors = checks.settings_errors()
            if errors:
                raise variants.Unavailable("wsmonitor rejects the bench settings: "
                                           + "; ".join(getattr(e, "msg", str(e)) for e in errors))
        import bench.benchproject.asgi  # noqa: F401  (builds the application)
    except ImportError as exc:
        print(f"unavailable: {exc}")
        return 3
    except variants.Unavailable as exc:
        print(f"unavailable: {exc}")
        return 3
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
