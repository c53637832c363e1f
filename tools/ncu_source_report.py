#!/usr/bin/env python3
"""Summary of ncu's source page (`ncu -i REP --page source --csv --print-source sass`): warp stall samples per SASS
opcode and the hottest instructions, with the stall-reason columns ncu gives per line.

    python3 tools/ncu_source_report.py SOURCE_CSV [TOP]"""
import collections
import csv
import io
import sys


def load(path):
    text = open(path, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(text) if l.startswith('"') and "Source" in l), 0)
    return list(csv.DictReader(io.StringIO("\n".join(text[start:]))))


def number(x):
    try:
        return float(str(x).replace(",", ""))
    except ValueError:
        return 0.0


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rows = load(path)
    if not rows:
        print("no rows"); return
    cols = list(rows[0].keys())
    src = next(c for c in cols if c.strip().lower() == "source")
    allc = next((c for c in cols if "Warp Stall Sampling (All" in c), None)
    reasons = [c for c in cols if c.startswith("stall_") and "Not Issued" not in c]
    if allc is None:
        print("no stall sampling column"); return
    total = sum(number(r[allc]) for r in rows) or 1.0
    by_op = collections.Counter()
    by_reason = collections.Counter()
    for r in rows:
        words = r[src].split() or ["?"]
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        by_op[op.split(".")[0]] += number(r[allc])
        for c in reasons:
            by_reason[c] += number(r[c])
    print(f"total stall samples {total:.0f}")
    print("by opcode:")
    for op, n in by_op.most_common(25):
        print(f"  {op:<12} {100 * n / total:5.1f}%")
    if by_reason:
        print("by reason column:")
        for c, n in by_reason.most_common(20):
            print(f"  {c:<60} {n:.0f}")
    print(f"top {top} lines:")
    hot = sorted(range(len(rows)), key=lambda i: -number(rows[i][allc]))[:top]
    for i in sorted(hot):
        r = rows[i]
        detail = ", ".join(f"{c.split('(')[0].strip()[-28:]}={number(r[c]):.0f}" for c in reasons if number(r[c]) > 0.1 * number(r[allc]))
        print(f"  [{i:5d}] {100 * number(r[allc]) / total:5.2f}%  {r[src].strip()[:70]:<70} {detail}")


if __name__ == "__main__":
    main()
