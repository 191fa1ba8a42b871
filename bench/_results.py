"""pytest-benchmark JSON -> result rows (bench/results.jsonl) -> bench/RESULTS.md.

Pure functions, no torch, nothing is run: bench/__main__.py calls them on the JSON that
`pytest --benchmark-json` wrote, tests/test_bench_runner.py on hand-made JSON.

A benchmark describes itself in `benchmark.extra_info` (so no test name is parsed here):

- kernel, provider, shape (list), dtype (str), device ("cpu" or "cuda")
- bytes: input bytes read per call (GB/s = bytes / median); absent where GB/s means nothing
- items: units of work per call (curves for the fits; default 1); ratios compare time per item
- case: which rows compare with each other (default: the shape); rows of one run with the same
  kernel, case, dtype and device form a comparison group
- baseline: the provider the `ratio` column is against; compare: further providers to report
  ratios against (bandwidth floors, other libraries)
- show: extra_info keys that RESULTS.md shows as columns
- anything else is kept in the row's `extra`
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# extra_info keys that become row fields (the rest go to `extra`)
RESERVED = (
    "kernel",
    "provider",
    "case",
    "shape",
    "dtype",
    "device",
    "bytes",
    "items",
    "baseline",
    "compare",
    "show",
    "test_failed",
)
# one row per key in RESULTS.md: the latest. Case and set too: the fits time scipy on subsets
# of one size for several cases, and a quick run must not break up the full set's tables;
# and the OpenMP wait policy where recorded (EXTRA_KEY): a run under another thread policy
# is another configuration, not a newer measurement of the same one
KEY = ("kernel", "case", "provider", "shape", "dtype", "device", "quick")
EXTRA_KEY = ("omp_wait_policy",)


def percentile(data: Sequence[float], q: float) -> float | None:
    """q-quantile (0 <= q <= 1) with linear interpolation between order statistics (numpy's
    default); None for no data."""
    xs = sorted(float(x) for x in data)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def utc_stamp(iso: str) -> str:
    """An ISO datetime (pytest-benchmark's `datetime`) as 'YYYY-MM-DDTHH:MM:SSZ' in UTC."""
    t = datetime.datetime.fromisoformat(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shape_str(shape: Sequence[int] | None) -> str:
    return "" if shape is None else "x".join(str(s) for s in shape)


def _finite(x: Any) -> Any:
    """x with every non-finite float replaced by None (JSON has no NaN/inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def rows_from_benchmark_json(doc: dict) -> list[dict]:
    """One row per benchmark of a `pytest --benchmark-json` document, with the ratios of the
    comparison groups of this run filled in (see the module docstring)."""
    machine = doc.get("machine_info") or {}
    commit = machine.get("massact_commit") or (doc.get("commit_info") or {}).get("id") or "unknown"
    date = utc_stamp(doc["datetime"])
    rows, targets = [], []
    for b in doc.get("benchmarks", []):
        info = dict(b.get("extra_info") or {})
        stats = b["stats"]
        data = stats.get("data") or []
        median = float(stats["median"])
        shape = info.get("shape")
        nbytes = info.get("bytes")
        baseline = info.get("baseline")
        row = {
            "kernel": info.get("kernel") or b.get("group") or b["name"].split("[")[0],
            "provider": info.get("provider") or b.get("param") or b["name"],
            "case": info.get("case") or shape_str(shape),
            "shape": None if shape is None else [int(s) for s in shape],
            "dtype": info.get("dtype"),
            "items": int(info.get("items", 1)),
            "median_s": median,
            "p20_s": percentile(data, 0.2),
            "p80_s": percentile(data, 0.8),
            "min_s": float(stats["min"]),
            "mean_s": float(stats["mean"]),
            "rounds": int(stats["rounds"]),
            "bytes": nbytes,
            "gbps": nbytes / median / 1e9 if nbytes and median > 0 else None,
            "baseline": baseline,
            "ratio": None,
            "ratios": {},
            "device": info.get("device") or machine.get("bench_device") or "cpu",
            "device_name": machine.get("device"),
            "commit": commit,
            "date": date,
            "quick": bool(machine.get("bench_quick", False)),
            "test": b.get("fullname") or b.get("name"),
            "failed": bool(info.get("test_failed", False)),
            "show": list(info.get("show") or []),
            "extra": {k: v for k, v in info.items() if k not in RESERVED},
        }
        rows.append(row)
        targets.append([p for p in [baseline, *(info.get("compare") or [])] if p])
    _add_ratios(rows, targets)
    return [_finite(r) for r in rows]


def _group(row: dict) -> tuple:
    return (row["kernel"], row["case"], row["dtype"], row["device"])


def _add_ratios(rows: list[dict], targets: list[list[str]]) -> None:
    """ratios[p] = time per item of provider p / this row's, p's row from the same run and
    comparison group (> 1: this row is faster); ratio = ratios[baseline] (1 for the baseline)."""
    by_group: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_group.setdefault(_group(r), {}).setdefault(r["provider"], r)
    for r, names in zip(rows, targets):
        per_item = r["median_s"] / r["items"]
        group = by_group[_group(r)]
        for name in names:
            other = group.get(name)
            if name == r["provider"] or other is None or per_item <= 0:
                continue
            r["ratios"][name] = (other["median_s"] / other["items"]) / per_item
        if r["baseline"] == r["provider"]:
            r["ratio"] = 1.0
        elif r["baseline"]:
            r["ratio"] = r["ratios"].get(r["baseline"])


# ---------------------------------------------------------------- the result file


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_rows(path: str | Path, rows: Iterable[dict]) -> int:
    """Append rows to a JSON-lines file (created if missing); returns how many."""
    lines = [json.dumps(_finite(r), allow_nan=False) + "\n" for r in rows]
    with open(path, "a") as f:
        f.writelines(lines)
    return len(lines)


def row_key(row: dict) -> tuple:
    fields = tuple(tuple(row[k]) if isinstance(row[k], list) else row[k] for k in KEY)
    return fields + tuple(row.get("extra", {}).get(k) for k in EXTRA_KEY)


def latest_rows(rows: Iterable[dict]) -> list[dict]:
    """The latest row (by date; later in the file wins a tie) per key (kernel, case, provider,
    shape, dtype, device, quick or full set), in the order of their first appearance."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        k = row_key(r)
        if k not in latest or r["date"] >= latest[k]["date"]:
            latest[k] = r
    return list(latest.values())


# ---------------------------------------------------------------- RESULTS.md

HEADER = """\
# Benchmark results

Generated by `python -m bench` (`make bench`) from `bench/results.jsonl`; do not edit by hand.
Notes and figures of earlier sessions, written by hand: [HISTORY.md](HISTORY.md).

Each table is one run: its first line names the device, the commit and the date. Per kernel,
case, provider, shape, dtype, device and set (quick or full), the latest row of results.jsonl
is shown. Times are
pytest-benchmark rounds: median and 20th-80th percentile. GB/s = bytes read (the input's size)
/ median time. "x baseline" = the baseline's time per item / this row's, both measured in the
same run (> 1: faster than the baseline); "vs others" likewise against the other providers the
benchmark names (bandwidth floors such as a copy or an amax pass: < 1 there means slower than
the floor). "ms/item" is per curve for the fits (scipy is timed on a subset of the curves).
"""


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"
    if isinstance(x, (dict, list)):
        return json.dumps(x, separators=(",", ":")).replace("|", "/")
    return str(x).replace("|", "/")


def _short(commit: str) -> str:
    """A commit hash shortened to 12 digits, keeping a '-dirty' mark."""
    head, dirty, _ = commit.partition("-dirty")
    return head[:12] + dirty


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if abs(ratio) >= 1000 else f"{ratio:.3g}x"


def _ms(s: float | None) -> str:
    return "–" if s is None else _fmt(s * 1e3)


def _table(rows: list[dict]) -> list[str]:
    r0 = rows[0]
    mode = "quick set" if r0["quick"] else "full set"
    loads = [r["extra"]["load_avg"] for r in rows if r["extra"].get("load_avg") is not None]
    if loads:
        mode += f"; 1-min load average {min(loads):.2f}-{max(loads):.2f} during the run"
    lines = [
        f"### {r0['kernel']} on {r0['device']}, {r0['date']}",
        "",
        f"Device {r0['device_name'] or r0['device']}; commit {_short(r0['commit'])}; "
        f"date {r0['date']}; {mode}.",
        "",
    ]
    show_case = any(r["case"] != shape_str(r["shape"]) for r in rows)
    show_items = any(r["items"] != 1 for r in rows)
    show_gbps = any(r["gbps"] is not None for r in rows)
    show_others = any(set(r["ratios"]) - {r["baseline"]} for r in rows)
    extra_keys: list[str] = []
    for r in rows:
        extra_keys += [k for k in r.get("show", []) if k not in extra_keys]
    cols = (["case"] if show_case else []) + ["shape", "dtype", "provider", "median ms"]
    cols += ["p20-p80 ms"] + (["ms/item"] if show_items else []) + (["GB/s"] if show_gbps else [])
    cols += ["x baseline"] + (["vs others"] if show_others else []) + extra_keys
    numeric = {"median ms", "p20-p80 ms", "ms/item", "GB/s", "x baseline", *extra_keys}
    lines += ["| " + " | ".join(cols) + " |"]
    lines += ["|" + "".join("---:|" if c in numeric else "---|" for c in cols)]
    for r in rows:
        cells = [r["case"]] if show_case else []
        provider = r["provider"] + (" (test failed)" if r["failed"] else "")
        cells += [shape_str(r["shape"]) or "–", r["dtype"] or "–", provider, _ms(r["median_s"])]
        cells.append(f"{_ms(r['p20_s'])}-{_ms(r['p80_s'])}")
        if show_items:
            cells.append(_ms(r["median_s"] / r["items"]))
        if show_gbps:
            cells.append(_fmt(r["gbps"]))
        if r["baseline"] and r["baseline"] == r["provider"]:
            cells.append("baseline")
        else:
            cells.append("–" if r["ratio"] is None else f"**{_x(r['ratio'])}**")
        if show_others:
            others = [(p, x) for p, x in r["ratios"].items() if p != r["baseline"]]
            cells.append(", ".join(f"{p} {_x(x)}" for p, x in others) or "–")
        cells += [_fmt(r["extra"].get(k)) for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(rows: Iterable[dict]) -> str:
    """RESULTS.md from result rows: the latest row per key, one table per run of a kernel on a
    device (newest run first), comparison groups together with the baseline first."""
    latest = latest_rows(rows)
    case_order: dict[tuple, int] = {}
    for r in latest:
        case_order.setdefault((r["kernel"], r["case"], r["dtype"]), len(case_order))
    tables: dict[tuple, list[dict]] = {}
    for r in latest:
        key = (r["kernel"], r["device"], r["date"], r["commit"], r["device_name"], r["quick"])
        tables.setdefault(key, []).append(r)
    order = sorted(tables, key=lambda k: (k[0], k[1], _neg(k[2])))
    out = [HEADER]
    if not tables:
        out.append("No results yet: run `python -m bench`.\n")
    kernel = None
    for key in order:
        if key[0] != kernel:
            kernel = key[0]
            out.append(f"## {kernel}\n")
        rows_t = sorted(
            enumerate(tables[key]),
            key=lambda ir: (
                case_order[(ir[1]["kernel"], ir[1]["case"], ir[1]["dtype"])],
                ir[1]["provider"] != ir[1]["baseline"],
                ir[0],
            ),
        )
        out.append("\n".join(_table([r for _, r in rows_t])) + "\n")
    return "\n".join(out)


def _neg(date: str) -> tuple:
    """Sort key that puts later ISO dates first."""
    return tuple(-ord(c) for c in date)
