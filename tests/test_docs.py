"""What users read agrees with the code: version bounds, and the reference's complete lists."""

import ast
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from wsmonitor.conf import DEFAULTS

from .conftest import ROOT

# --- Supported versions ----------------------------------------------------------------------


def pins(end):
    """``{canonical name: Version}`` of scripts/matrix/<end>.txt."""
    result = {}
    for line in (ROOT / "scripts" / "matrix" / f"{end}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            result[canonicalize_name(name)] = Version(version)
    return result


def lower_bounds(requirements):
    """``{canonical name: Version}`` of each requirement's ``>=`` bound."""
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[canonicalize_name(requirement.name)] = Version(spec.version)
    return bounds


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return project["dependencies"] + [text for extra in extras for text in extra]


def requirements_txt():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_the_oldest_pins_are_the_lower_bounds():
    oldest = pins("oldest")
    for source, requirements in (("pyproject.toml", pyproject_requirements()),
                                 ("requirements.txt", requirements_txt())):
        bounds = lower_bounds(requirements)
        differing = {name: (str(bounds[name]), str(pin)) for name, pin in oldest.items()
                     if name in bounds and bounds[name] != pin}
        assert differing == {}, f"{source}: lower bound != scripts/matrix/oldest.txt"
    # Every library the package depends on is tested at its oldest and newest version.
    needed = set(lower_bounds(pyproject_requirements()))
    assert needed <= set(oldest) and needed <= set(pins("newest"))


def readme_versions():
    """``{canonical name: (oldest, newest)}`` from the README's "Supported versions" table."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Supported versions\n(.*?)^## ", readme, re.S | re.M).group(1)
    names = {"redis-py": "redis"}
    table = {}
    for row in re.findall(r"^\|(.+)\|\s*$", section, re.M):
        cells = [cell.strip() for cell in row.split("|")]
        if len(cells) != 3 or not re.match(r"\d", cells[1]) or cells[0] == "Python":
            continue  # the header, its rule, and Python's row (the interpreter, not a pin)
        libraries = re.sub(r"\(.*?\)", "", cells[0]).split(",")
        oldest = re.findall(r"\d+(?:\.\d+)*", cells[1].split("(")[0])
        newest = re.findall(r"\d+(?:\.\d+)*", cells[2].split("(")[0])
        assert len(libraries) == len(oldest) == len(newest), row
        for library, low, high in zip(libraries, oldest, newest):
            name = canonicalize_name(names.get(library.strip(), library.strip()))
            table[name] = (Version(low), Version(high))
    return table


def test_the_readme_table_shows_the_matrix_pins():
    table, oldest, newest = readme_versions(), pins("oldest"), pins("newest")
    wrong = {name: (str(low), str(high)) for name, (low, high) in table.items()
             if (oldest.get(name), newest.get(name)) != (low, high)}
    assert wrong == {}, "README.md's Supported versions table differs from scripts/matrix/"
    assert set(lower_bounds(pyproject_requirements())) <= set(table)


# --- docs/reference.md names everything a user can meet -------------------------------------

METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "CounterMetricFamily",
                "GaugeMetricFamily", "HistogramMetricFamily", "SummaryMetricFamily"}


def sources():
    for path in sorted((ROOT / "wsmonitor").rglob("*.py")):
        if "migrations" not in path.parts:
            yield path, ast.parse(path.read_text())


def defined_metrics():
    """``{exported name: file}`` of every metric wsmonitor defines."""
    names = {}
    for path, tree in sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            kind = getattr(node.func, "id", getattr(node.func, "attr", None))
            if kind in METRIC_TYPES:
                name = node.args[0].value
                if kind.startswith("Counter") and not name.endswith("_total"):
                    name += "_total"
                names[name] = path.name
    return names


def log_events():
    """Every ``ws_*`` string literal that is not a metric or one of its samples: the events."""
    metrics = set(defined_metrics())
    bare = {name.removesuffix("_total") for name in metrics}
    samples = {f"{name}{suffix}" for name in bare for suffix in ("_count", "_sum", "_bucket")}
    events = {}
    for path, tree in sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"ws_[a-z_]+", node.value)
                    and node.value not in metrics | bare | samples):
                events[node.value] = path.name
    return events


def check_ids():
    ids = {}
    for path in (ROOT / "wsmonitor").rglob("*.py"):
        for check_id in re.findall(r"wsmonitor\.([EW]\d{3})", path.read_text()):
            ids[check_id] = path.name
    return ids


def reference():
    return (ROOT / "docs" / "reference.md").read_text()


def section(title):
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", reference(), re.S | re.M)
    assert match, f"docs/reference.md has no '## {title}' section"
    return match.group(1)


def table_keys(text):
    """The backquoted names in the first cell of each table row."""
    return {name for row in re.findall(r"^\|([^|\n]*)\|", text, re.M)
            for name in re.findall(r"`([^`]+)`", row)}


def test_the_reference_lists_every_metric():
    listed = table_keys(section("Metrics"))
    missing = {name: path for name, path in defined_metrics().items() if name not in listed}
    assert missing == {}
    assert sorted(name for name in listed
                  if name.startswith("ws_") and name not in defined_metrics()) == []


def test_the_reference_lists_every_log_event():
    events = log_events()
    assert {"ws_open", "ws_close", "ws_reject", "ws_error"} <= set(events)  # the parse works
    listed = table_keys(section("Logs"))
    missing = {name: path for name, path in events.items() if name not in listed}
    assert missing == {}
    assert sorted(name for name in listed if name.startswith("ws_") and name not in events) == []


def test_the_reference_lists_every_setting():
    listed = table_keys(section("Settings"))
    assert sorted(set(DEFAULTS) - listed) == []
    assert sorted(name for name in listed - set(DEFAULTS) if name.isupper()) == []


def test_the_reference_lists_every_system_check():
    listed = set()
    for cell in table_keys(section("System checks")):
        ids = re.findall(r"(?:wsmonitor\.)?([EW]\d{3})", cell)
        listed.update(ids)
    for row in re.findall(r"^\|([^|\n]*)\|", section("System checks"), re.M):
        # A range such as `wsmonitor.E001`–`E017` covers every id between its ends.
        for kind, low, high in re.findall(r"([EW])(\d{3})`?\s*[–-]\s*`?(?:wsmonitor\.)?[EW](\d{3})",
                                          row):
            listed.update(f"{kind}{n:03d}" for n in range(int(low), int(high) + 1))
    ids = check_ids()
    assert {"E001", "W001", "W004"} <= set(ids)  # the scan works
    missing = {check_id: path for check_id, path in ids.items() if check_id not in listed}
    assert missing == {}
