#!/usr/bin/env python3
"""Checks `tileattn plan --json` against an independent implementation of the STA window definition.

For query tile c along an axis of n tiles and window w, the visited key tiles are [s, s + w) with
s = clamp(c - w // 2, 0, n - w). Video queries also see all text tokens; text queries see everything.
Sparsity = skipped (query, key) pairs / all pairs, text included, exact for partial tiles.
"""
import itertools
import json
import math
import os
import random
import subprocess
import sys
import tempfile

CLI = sys.argv[1]


def ceil_div(a, b):
    return -(-a // b)


def expected(video, tile, window, text):
    grid = [ceil_div(v, t) for v, t in zip(video, tile)]
    size = lambda c: math.prod(min(tile[a], video[a] - c[a] * tile[a]) for a in range(3))
    tiles = list(itertools.product(*(range(g) for g in grid)))
    n_video = video[0] * video[1] * video[2]
    total = n_video + text
    visited = text * total  # text queries see everything
    plan = {}
    for c in tiles:
        ranges = []
        for a in range(3):
            s = max(0, min(c[a] - window[a] // 2, grid[a] - window[a]))
            ranges.append(range(s, s + window[a]))
        keys = sorted(itertools.product(*ranges))
        plan[c] = keys
        visited += size(c) * (sum(size(k) for k in keys) + text)
    return grid, plan, 1.0 - visited / (total * total)


def run(args, path):
    subprocess.run([CLI, "plan", *args, "--json", path], check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        return json.load(f)


def check_head(obj, video, tile, window, text, where):
    grid, plan, sparsity = expected(video, tile, window, text)
    assert obj["grid"] == grid, (where, obj["grid"], grid)
    assert abs(obj["sparsity"] - sparsity) < 1e-12, (where, obj["sparsity"], sparsity)
    got = {tuple(q["tile"]): sorted(tuple(k) for k in q["keys"]) for q in obj["query_tiles"]}
    assert len(got) == len(obj["query_tiles"]) == len(plan), where
    for c, keys in plan.items():
        assert got[c] == keys, (where, c, got[c], keys)


def random_window(n, rng):
    if rng.random() < 0.2:
        return n
    return min(n, 2 * rng.randint(0, (n - 1) // 2) + 1)


def main():
    rng = random.Random(11)
    cases = [((30, 48, 80), (6, 8, 8), (3, 3, 3), 256), ((30, 48, 80), (6, 8, 8), (5, 6, 10), 0),
             ((1, 1, 1), (6, 8, 8), (1, 1, 1), 0), ((7, 9, 17), (6, 8, 8), (1, 1, 3), 5),
             ((31, 50, 83), (6, 8, 8), (5, 5, 5), 77)]
    for _ in range(40):
        video = tuple(rng.randint(1, 40) for _ in range(3))
        tile = tuple(rng.randint(1, 9) for _ in range(3))
        grid = [ceil_div(v, t) for v, t in zip(video, tile)]
        cases.append((video, tile, tuple(random_window(g, rng) for g in grid), rng.choice([0, 1, 77, 256, 333])))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "plan.json")
        for video, tile, window, text in cases:
            fmt = lambda e: "x".join(map(str, e))
            obj = run(["--shape", fmt(video), "--tile", fmt(tile), "--window", fmt(window), "--text", str(text)], path)
            check_head(obj, video, tile, window, text, (video, tile, window, text))
        # several heads with their own windows
        video, tile, text = (18, 24, 40), (6, 8, 8), 33
        windows = [(1, 1, 1), (3, 3, 5), (3, 1, 5)]
        obj = run(["--shape", "18x24x40", "--tile", "6x8x8", "--text", str(text),
                   "--window", ",".join("x".join(map(str, w)) for w in windows)], path)
        assert len(obj["heads"]) == 3
        for w, head in zip(windows, obj["heads"]):
            check_head(head, video, tile, w, text, ("heads", w))
        total = sum(expected(video, tile, w, text)[2] for w in windows) / 3
        assert abs(obj["sparsity"] - total) < 1e-12, (obj["sparsity"], total)
        obj = run(["--shape", "12x16x16", "--window", "1x1x1", "--heads", "4"], path)
        assert len(obj["heads"]) == 4
    print(f"plan JSON matches the window definition on {len(cases) + 2} configurations")


if __name__ == "__main__":
    main()
