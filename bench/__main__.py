"""The benchmark runner: pytest-benchmark on bench/, rows appended to one result file.

    python -m bench [--quick] [--device cpu|cuda] [-k EXPR] [--results PATH] [-- PYTEST_ARGS]

Runs `pytest bench --benchmark-only --benchmark-json=<tmp>`, converts every benchmark of that
JSON into a row (bench/_results.py) and appends the rows to bench/results.jsonl (or --results),
then regenerates RESULTS.md next to that file from all its rows. The exit code is pytest's.
`--render-only` regenerates RESULTS.md without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ._results import append_rows, read_rows, render_markdown, rows_from_benchmark_json

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results.jsonl"


def pytest_command(args: argparse.Namespace, json_path: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(BENCH_DIR), "-q", "-p", "no:cacheprovider"]
    cmd += ["--benchmark-only", f"--benchmark-json={json_path}", f"--bench-device={args.device}"]
    # every case skipped (CUDA variants without a GPU, a -k that selects none): not an error
    cmd += ["-W", "ignore:Not saving anything:pytest_benchmark.logger.PytestBenchmarkWarning"]
    if args.quick:
        cmd.append("--bench-quick")
    if args.k:
        cmd += ["-k", args.k]
    if args.real:
        cmd.append(f"--bench-real={args.real}")
    return cmd + extra


def write_markdown(results: Path, markdown: Path) -> None:
    markdown.write_text(render_markdown(read_rows(results)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a CPU run in minutes)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("-k", metavar="EXPR", help="pytest -k expression")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines result file")
    p.add_argument("--markdown", type=Path, help="default: RESULTS.md next to --results")
    p.add_argument("--real", metavar="DATASET_ROOT", help="also fit a real dataset's curves")
    p.add_argument("--render-only", action="store_true", help="only regenerate the markdown")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    results = args.results.resolve()
    markdown = (args.markdown or results.with_name("RESULTS.md")).resolve()
    if args.render_only:
        write_markdown(results, markdown)
        print(f"wrote {markdown} from {results}")
        return 0
    env = dict(os.environ)
    if args.device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")  # the fits on the CPU too, even on a GPU host
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "benchmark.json"
        rc = subprocess.run(pytest_command(args, json_path, extra), cwd=ROOT, env=env).returncode
        rows = []
        if json_path.exists():
            rows = rows_from_benchmark_json(json.loads(json_path.read_text()))
    if rows:
        results.parent.mkdir(parents=True, exist_ok=True)
        append_rows(results, rows)
        print(f"appended {len(rows)} rows to {results}")
    else:
        print("no benchmark ran: nothing appended")
    write_markdown(results, markdown)
    print(f"wrote {markdown}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
