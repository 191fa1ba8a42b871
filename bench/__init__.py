"""Benchmarks of massact: speed and memory targets, one runner, one result file.

`python -m bench` (also `make bench`) runs the pytest-benchmark tests in this folder, appends one
row per benchmark to bench/results.jsonl and regenerates bench/RESULTS.md from that file
(bench/__main__.py). The conversion of pytest-benchmark's JSON into rows and of rows into
markdown is in bench/_results.py; what each benchmark measures is in its test module.
"""
