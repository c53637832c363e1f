#!/usr/bin/env python3
"""STA forward benchmark, hunyuan-720p (B=1, 24 heads, 30x48x80, tile 6x8x8, D=128, bf16), in ONE run on the same
inputs: tileattn STA at several windows and dense (same kernel), cuDNN SDPA dense, FlexAttention with the same STA
block mask (full 128x128 blocks, no mask_mod, tile-major tokens as in ../shared/ANCHORS.md). CUDA events, median of
--reps after --warmup. Checks tileattn against FlexAttention (relative L2) on the same inputs. Writes
<out>/<gpu>-hunyuan-720p.json with every time in ms, TFLOP/s and ratios.

Usage: python3 bench/bench_sta.py --out bench/results [--reps 10] [--texts 0,256]
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import tileattn  # noqa: E402
from tileattn.sta import _tile_major_order  # noqa: E402

VIDEO, TILE, HEADS, D = (30, 48, 80), (6, 8, 8), 24, 128
WINDOWS = {"3x3x3": (3, 3, 3), "5x3x5": (5, 3, 5), "5x5x5": (5, 5, 5)}
GRID = tuple(v // t for v, t in zip(VIDEO, TILE))


def timed(fn, warmup, reps, inner=3):
    """Median over `reps` of the mean time of `inner` back-to-back calls (CUDA events). Back-to-back calls keep the
    GPU busy while Python prepares the next launch, so host overhead is not counted as kernel time."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    times.sort()
    return times[len(times) // 2], times


def visited_pairs(window, text):
    """Exact (query, key) pairs per head: video queries see window tiles + text, text queries see everything."""
    n_video, tile_tokens = math.prod(VIDEO), math.prod(TILE)
    total = n_video + text
    tiles = math.prod(window) if window else math.prod(GRID)
    return n_video * (tiles * tile_tokens + text) + text * total


def flex_block_mask(window, text, device):
    """For each 128-row query block (tile-major tokens), its window's 128-key blocks as FULL blocks."""
    from torch.nn.attention.flex_attention import BlockMask
    blocks_per_tile = math.prod(TILE) // 128
    n_tiles = math.prod(GRID)
    n_text_blocks = -(-text // 128)
    n_blocks = n_tiles * blocks_per_tile + n_text_blocks
    rows = []
    for q in range(n_tiles):
        qt, qh, qw = q // (GRID[1] * GRID[2]), (q // GRID[2]) % GRID[1], q % GRID[2]
        s = [max(0, min(c - w // 2, g - w)) for c, w, g in zip((qt, qh, qw), window, GRID)]
        keys = []
        for t in range(s[0], s[0] + window[0]):
            for h in range(s[1], s[1] + window[1]):
                for w in range(s[2], s[2] + window[2]):
                    tile_index = (t * GRID[1] + h) * GRID[2] + w
                    keys += [tile_index * blocks_per_tile + b for b in range(blocks_per_tile)]
        keys += [n_tiles * blocks_per_tile + j for j in range(n_text_blocks)]
        rows += [keys] * blocks_per_tile
    rows += [list(range(n_blocks))] * n_text_blocks
    # from_kv_blocks infers the KV length from the index tensor's width: make it the full number of KV blocks.
    idx = torch.zeros(1, 1, n_blocks, n_blocks, dtype=torch.int32)
    cnt = torch.zeros(1, 1, n_blocks, dtype=torch.int32)
    for i, r in enumerate(rows):
        idx[0, 0, i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        cnt[0, 0, i] = len(r)
    zeros = torch.zeros_like(cnt)
    return BlockMask.from_kv_blocks(zeros.to(device), idx.to(device), cnt.to(device), idx.to(device),
                                    BLOCK_SIZE=128)


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def ceilings():
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms, _ = timed(lambda: x @ x, 3, 10)
    big = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    cms, _ = timed(lambda: dst.copy_(big), 3, 10)
    return 2 * 8192 ** 3 / (ms * 1e9), 2 * big.numel() / (cms * 1e6)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--texts", default="0,256")
    p.add_argument("--no-flex", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    gpu = "h200" if "H200" in name else "h100" if "H100" in name else name.replace(" ", "_").lower()
    mm, bw = ceilings()
    res = {"gpu": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
           "workload": "hunyuan-720p", "video": VIDEO, "tile": TILE, "heads": HEADS, "head_dim": D, "dtype": "bf16",
           "reps": a.reps, "warmup": a.warmup, "statistic": "median over reps of the mean of 3 back-to-back calls, CUDA events",
           "bf16_matmul_8192_tflops": round(mm, 1), "device_copy_tb_s": round(bw, 2)}
    print(f"{name}: bf16 matmul {mm:.0f} TFLOP/s, copy {bw:.2f} TB/s", flush=True)
    flex = None
    if not a.no_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    for text in [int(t) for t in a.texts.split(",")]:
        sfx = "" if text == 0 else f"_text{text}"
        S = math.prod(VIDEO) + text
        q, k, v = (torch.randn(1, HEADS, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        rows = []

        def record(key, ms, window):
            tflops = 4 * D * HEADS * visited_pairs(window, text) / (ms * 1e9)
            res[key] = round(ms, 3)
            res[key.replace("_ms", "_tflops")] = round(tflops, 1)
            rows.append((key, ms, tflops))
            print(f"  {key:<40} {ms:9.3f} ms {tflops:7.1f} TFLOP/s", flush=True)

        print(f"text {text}: S={S}", flush=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms, _ = timed(lambda: F.scaled_dot_product_attention(q, k, v), a.warmup, a.reps)
            dense_ref = F.scaled_dot_product_attention(q, k, v)
        record(f"cudnn_dense_fwd_ms{sfx}", ms, None)
        out = tileattn.sta_attention(q, k, v, VIDEO, window=None, text_len=text)
        res[f"check_dense_vs_cudnn_rel_l2{sfx}"] = rel_l2(out, dense_ref)
        ms, _ = timed(lambda: tileattn.sta_attention(q, k, v, VIDEO, window=None, text_len=text), a.warmup, a.reps)
        record(f"tileattn_dense_fwd_ms{sfx}", ms, None)
        del dense_ref
        order = _tile_major_order(VIDEO, TILE, text, q.device)
        qt, kt, vt = (x.index_select(2, order) for x in (q, k, v))
        for label, w in WINDOWS.items():
            ms, _ = timed(lambda: tileattn.sta_attention(q, k, v, VIDEO, window=w, text_len=text), a.warmup, a.reps)
            record(f"tileattn_sta_{label}_fwd_ms{sfx}", ms, w)
            if label == "3x3x3":
                ms, _ = timed(lambda: tileattn.sta_attention(qt, kt, vt, VIDEO, window=w, text_len=text,
                                                             layout="tile_major"), a.warmup, a.reps)
                record(f"tileattn_sta_{label}_tilemajor_fwd_ms{sfx}", ms, w)
            if flex is not None:
                mask = flex_block_mask(w, text, q.device)
                ref = flex(qt, kt, vt, block_mask=mask)
                ours = tileattn.sta_attention(q, k, v, VIDEO, window=w, text_len=text).index_select(2, order)
                res[f"check_sta_{label}_vs_flex_rel_l2{sfx}"] = rel_l2(ours, ref)
                del ours, ref
                ms, _ = timed(lambda: flex(qt, kt, vt, block_mask=mask), a.warmup, a.reps)
                record(f"flex_sta_{label}_fwd_ms{sfx}", ms, w)
        cudnn = res[f"cudnn_dense_fwd_ms{sfx}"]
        for key, ms, _ in rows:
            if key.startswith("tileattn"):
                res[key.replace("_fwd_ms", "_speedup_vs_cudnn_dense")] = round(cudnn / ms, 2)
                flex_key = key.replace("tileattn", "flex")
                if flex_key in res:
                    res[key.replace("_fwd_ms", "_speedup_vs_flex")] = round(res[flex_key] / ms, 2)
        nat, tm = res.get(f"tileattn_sta_3x3x3_fwd_ms{sfx}"), res.get(f"tileattn_sta_3x3x3_tilemajor_fwd_ms{sfx}")
        if nat and tm:
            res[f"natural_order_overhead_3x3x3{sfx}"] = round(nat / tm - 1, 4)
        for key in [k for k in res if k.startswith("check_")]:
            print(f"  {key:<40} {res[key]:.2e}")
        del q, k, v, qt, kt, vt
        torch.cuda.empty_cache()
    out_dir = pathlib.Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{gpu}-hunyuan-720p.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
