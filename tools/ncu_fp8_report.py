#!/usr/bin/env python3
"""Summaries of ncu's raw CSV pages for the FP8 device scripts (device_fp8_profile.sh, device_fp8_final.sh).

    python3 tools/ncu_fp8_report.py DURATIONS_CSV [METRICS_CSV]

DURATIONS_CSV (`--metrics gpu__time_duration.sum`): every kernel's duration and their total, the input fill
kernels left out. METRICS_CSV (the attention kernel's sections): its stall, pipe and throughput metrics."""
import csv
import io
import sys


def rows(path):
    lines = open(path).read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    rows = [] if start is None else csv.DictReader(io.StringIO("\n".join(lines[start:])))
    return [r for r in rows if r.get("ID", "").isdigit()]


def durations(path):
    total = 0.0
    for r in rows(path):
        if "fill_random" in r["Kernel Name"]:
            continue
        us = float(r["gpu__time_duration.sum"].replace(",", "")) / 1e3
        total += us
        print(f"{r['Kernel Name'][:70]:<70} {us:>10.1f} us")
    print(f"{'total':<70} {total:>10.1f} us")


def metrics(path):
    keys = ("stalled", "pipe_", "inst_executed_pipe", "throughput", "issue_active", "cycles_elapsed.avg", "duration")
    for r in rows(path):
        for k, v in r.items():
            if any(t in k for t in keys) and v not in ("", "n/a"):
                print(f"{k[:90]:<90} {v}")


if __name__ == "__main__":
    durations(sys.argv[1])
    if len(sys.argv) > 2:
        metrics(sys.argv[2])
