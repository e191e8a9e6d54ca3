#!/usr/bin/python3
"""Runs a toml-test decoder over the toml-test cases in <repo>/../shared.

Usage: run.py path/to/toml-decoder

valid/**/X.toml must decode to the same values as X.json (compared as
values: numbers numerically, nan equal to nan, datetimes normalised);
invalid/**/X.toml must exit 1 with exactly one "LINE:COL: message" line on
stderr. Ends with "toml-test: P passed, F failed"; exit 1 if any failed.
"""
import datetime
import json
import math
import os
import re
import subprocess
import sys

TIMEOUT = 10
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
CASES = os.path.normpath(os.path.join(REPO, "..", "shared", "conformance", "toml-test"))
ERROR_LINE = re.compile(r"^[1-9][0-9]*:[1-9][0-9]*: \S.*$")

DT_RE = re.compile(
    r"^(?:(\d{4})-(\d{2})-(\d{2}))?"
    r"(?:[Tt ]?(\d{2}):(\d{2})(?::(\d{2}))?(?:\.(\d+))?)?"
    r"([Zz]|[+-]\d{2}:\d{2})?$"
)


def norm_datetime(kind, text):
    """A datetime as a comparable tuple; offset datetimes as UTC instants."""
    m = DT_RE.match(text)
    if not m:
        return ("unparsable", text)
    y, mo, d, h, mi, s, frac, off = m.groups()
    # Fractional seconds compare numerically, down to the nanosecond.
    ns = int((frac or "0")[:9].ljust(9, "0"))
    if kind == "datetime":
        if off is None:
            return ("no offset", text)
        if off in ("Z", "z"):
            minutes = 0
        else:
            minutes = (int(off[1:3]) * 60 + int(off[4:6])) * (-1 if off[0] == "-" else 1)
        sec = int(s or 0)
        leap = sec == 60
        t = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), 59 if leap else sec)
        t -= datetime.timedelta(minutes=minutes)
        return (t.isoformat(), leap, ns)
    return tuple(int(x) if x is not None else None for x in (y, mo, d, h, mi, s)) + (ns,)


def same_scalar(exp, got):
    kind = exp["type"]
    if got.get("type") != kind or not isinstance(got.get("value"), str):
        return False
    ev, gv = exp["value"], got["value"]
    if kind == "integer":
        try:
            return int(ev) == int(gv)
        except ValueError:
            return False
    if kind == "float":
        try:
            e, g = float(ev), float(gv)
        except ValueError:
            return False
        if math.isnan(e) or math.isnan(g):
            return math.isnan(e) and math.isnan(g)
        return e == g
    if kind in ("datetime", "datetime-local", "date-local", "time-local"):
        return norm_datetime(kind, ev) == norm_datetime(kind, gv)
    return ev == gv


def is_scalar(x):
    return (isinstance(x, dict) and set(x) == {"type", "value"}
            and isinstance(x.get("type"), str) and not isinstance(x.get("value"), (dict, list)))


def compare(exp, got, path="$"):
    """None when equal, else a description of the first difference."""
    if is_scalar(exp):
        if not isinstance(got, dict) or not same_scalar(exp, got):
            return f"{path}: expected {json.dumps(exp)}, got {json.dumps(got)}"
        return None
    if isinstance(exp, dict):
        if not isinstance(got, dict) or is_scalar(got):
            return f"{path}: expected a table, got {json.dumps(got)[:200]}"
        if set(exp) != set(got):
            return (f"{path}: keys differ: missing {sorted(set(exp) - set(got))}, "
                    f"extra {sorted(set(got) - set(exp))}")
        for k in exp:
            d = compare(exp[k], got[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(exp, list):
        if not isinstance(got, list):
            return f"{path}: expected an array, got {json.dumps(got)[:200]}"
        if len(exp) != len(got):
            return f"{path}: expected {len(exp)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(exp, got)):
            d = compare(e, g, f"{path}[{i}]")
            if d:
                return d
        return None
    return f"{path}: unexpected expected-value {exp!r}"


def run(decoder, path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        p = subprocess.run([decoder], input=data, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, b"", b"timed out"
    return p.returncode, p.stdout, p.stderr


def check_valid(decoder, toml_path):
    json_path = toml_path[:-len(".toml")] + ".json"
    with open(json_path, encoding="utf-8") as f:
        expected = json.load(f)
    rc, out, err = run(decoder, toml_path)
    if rc != 0:
        return f"exit {rc}: {err.decode('utf-8', 'replace').strip()[:300]}"
    try:
        got = json.loads(out)
    except ValueError as e:
        return f"bad JSON on stdout: {e}"
    return compare(expected, got)


def check_invalid(decoder, toml_path):
    rc, out, err = run(decoder, toml_path)
    text = err.decode("utf-8", "replace")
    if rc != 1:
        return f"exit {rc}, expected 1; stderr: {text.strip()[:300]}"
    lines = text.splitlines()
    if len(lines) != 1 or not text.endswith("\n") or not ERROR_LINE.match(lines[0]):
        return f"stderr is not one 'LINE:COL: message' line: {text[:300]!r}"
    return None


def cases(kind):
    root = os.path.join(CASES, kind)
    for d, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".toml"):
                yield os.path.join(d, name)


def main():
    if len(sys.argv) != 2:
        print("usage: run.py path/to/toml-decoder", file=sys.stderr)
        return 2
    decoder = os.path.abspath(sys.argv[1])
    if not os.path.isdir(CASES):
        print(f"toml-test: no cases at {CASES}", file=sys.stderr)
        return 2
    passed = failed = 0
    for kind, check in (("valid", check_valid), ("invalid", check_invalid)):
        for path in cases(kind):
            problem = check(decoder, path)
            if problem:
                failed += 1
                print(f"FAIL {os.path.relpath(path, CASES)}: {problem}")
            else:
                passed += 1
    if passed == 0:
        failed += 1
        print("FAIL: no cases found")
    print(f"toml-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
