#!/usr/bin/env python3
"""Bad command-line input gets a clear error naming the argument: no crash, no hang, no output file."""
import subprocess
import sys

CLI = sys.argv[1]

CASES = [
    (["plan", "--shape", "30x48"], "--shape"),
    (["plan", "--shape", "0x48x80"], "--shape"),
    (["plan", "--tile", "6x8"], "--tile"),
    (["plan", "--window", "4x3x3"], "--window"),     # even and not the full grid (5)
    (["plan", "--window", "7x3x3"], "--window"),     # larger than the grid
    (["plan", "--window", "3x3x3,3x3", "--heads", "2"], "--window"),
    (["plan", "--window", "3x3x3,3x3x3", "--heads", "3"], "--heads"),
    (["plan", "--text", "-1"], "--text"),
    (["plan", "--strategy", "/nonexistent.json", "--heads", "2"], "/nonexistent.json"),
    (["plan", "--json", "/nonexistent/dir/x.json"], "--json"),
    (["plan", "--svg-head", "3"], "--svg-head"),
    (["bench", "--dtype", "fp8"], "--dtype"),
    (["bench", "--windows", "2x2x2"], "--windows"),
    (["bench", "--precision", "fp16"], "--precision"),
    (["bench", "--precision", "fp8", "--backward"], "--precision"),  # the FP8 forward has no backward
    (["bench", "--precision", "fp8", "--fg"], "--precision"),
    # FG-Attn options are checked before any GPU work (so also in builds and on machines without one)
    (["bench", "--fg", "--fg-sparsity", "1.0"], "--fg-sparsity"),
    (["bench", "--fg", "--fg-sparsity", "0.5,x"], "--fg-sparsity"),
    (["bench", "--fg", "--fg-kind", "random,diagonal"], "--fg-kind"),
    (["bench", "--fg", "--fg-key-group", "0"], "--fg-key-group"),
    (["bench", "--fg", "--fg-key-group", "16,"], "--fg-key-group"),
    (["bench", "--fg", "--fg-query-block", "96"], "--fg-query-block"),
    (["bench", "--fg-kind", "local"], "--fg"),  # meaningless without --fg
]


def main():
    for args, needle in CASES:
        r = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode > 0, (args, r.returncode, r.stderr)  # negative = killed by a signal
        assert needle in r.stderr, (args, r.stderr)
    print(f"{len(CASES)} bad invocations rejected with a message naming the argument")


if __name__ == "__main__":
    main()
