#!/usr/bin/env python3
"""FG-Attn forward benchmark, hunyuan-720p (B=1, 24 heads, 30x48x80 video = 115,200 tokens, D=128, bf16), in ONE run
on the same inputs:
  - tileattn FG on synthetic plans built on the GPU (random and local masks at 50/70/90% sparsity, key groups N=1 and
    N=16, query blocks M=128), and the mask build itself;
  - cuDNN SDPA dense;
  - FlexAttention with the same mask: a BlockMask built from the FG plan (BlockMask.from_kv_blocks: blocks the plan
    covers entirely are FULL, blocks it covers in part run a mask_mod that looks the key group up in a bool table
    [heads, query blocks, key groups]); block sizes 128 and 64 are tried and the faster is kept. create_block_mask is
    not used: over 115,200^2 it materializes the element mask (see ../shared/ANCHORS.md);
  - tileattn STA at the same sparsity (tile grid 5x6x10: windows 5x6x5 = 50%, 3x6x5 = 70%, 1x6x5 = 90%).
Every method runs once per round, in a rotating order, timed with CUDA events; the median over rounds is reported.
FG is checked against FlexAttention (relative L2) on the same inputs. Writes <out>/<gpu>-hunyuan-720p-fg.json (out:
--out, else $OUT, else bench/results) or --json PATH. --quick: a small shape for a smoke test.

Usage: python3 bench/bench_fg.py [--quick] [--reps 5] [--no-flex] [--json PATH]
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_sta import ceilings, interleaved_rounds, rel_l2, timed  # noqa: E402  (puts ../python on the path)
import tileattn  # noqa: E402

D = 128
TILE = (6, 8, 8)
WORKLOADS = {
    # name: video, heads, STA window (tiles) per sparsity
    # grid 5x6x10; windows are odd or the full extent per axis, so 90% (30 tiles) is 1x6x5 (3x2x5 is not a window)
    "hunyuan-720p": ((30, 48, 80), 24, {0.5: (5, 6, 5), 0.7: (3, 6, 5), 0.9: (1, 6, 5)}),
    "quick": ((18, 16, 40), 4, {0.5: (3, 1, 5), 0.7: (3, 1, 3), 0.9: (1, 1, 3)}),          # grid 3x2x5
}
PLAN_TABLE_LIMIT = 2 << 30  # bytes: past this, a plan's capacity follows the target density instead of all groups


def cdiv(a, b):
    return -(-a // b)


def build_plan(tokens, heads, M, N, sparsity, kind, video, seed):
    """The synthetic plan and the keyword arguments that rebuild it in place. Capacity: every key group, unless that
    table would be large (N=1: 10 GB at hunyuan-720p); then about 1.25x the target density, and if any row filled
    that, again with every group (a full row may have been cut)."""
    groups = cdiv(tokens, N)
    capacity = groups
    if heads * cdiv(tokens, M) * groups * 4 > PLAN_TABLE_LIMIT:
        capacity = min(groups, math.ceil(groups * (1 - sparsity) * 1.25) + cdiv(M, N) + 64)
    kw = dict(kind=kind, video=video if kind == "local" else None, seed=seed)
    plan = tileattn.synthetic_fg_plan(tokens, heads, M, N, sparsity, capacity=capacity, **kw)
    if capacity < groups and int(plan.counts.max()) >= capacity:
        print(f"  {kind} N={N} s={sparsity}: a row reached capacity {capacity}; rebuilding with {groups}", flush=True)
        del plan
        plan = tileattn.synthetic_fg_plan(tokens, heads, M, N, sparsity, capacity=groups, **kw)
    return plan, kw


def fg_mask_mod(table, M, N):
    """FlexAttention mask_mod of an FG plan: table bool [heads, query blocks, key groups]."""
    def mask_mod(b, h, q_idx, kv_idx):
        return table[h, q_idx // M, kv_idx // N]
    return mask_mod


def flex_block_mask(table, tokens, M, N, block):
    """BlockMask of the plan whose group mask is `table`, at block x block granularity: FULL where every position of
    the block is visited, partial (mask_mod) where some are. Needs tokens, M and N compatible with the block."""
    from torch.nn.attention.flex_attention import BlockMask
    heads, nqb, groups = table.shape
    if tokens % block or tokens % M or block % N or (block % M and M % block):
        raise ValueError(f"block {block} does not fit tokens {tokens}, M {M}, N {N}")
    nkb = tokens // block
    per_block = table.view(heads, nqb, nkb, block // N)  # exact: N divides the block and the tokens
    visited_any, visited_all = per_block.any(-1), per_block.all(-1)
    if block <= M:  # several Flex query blocks per plan query block
        visited_any, visited_all = (x.repeat_interleave(M // block, 1) for x in (visited_any, visited_all))
    else:  # several plan query blocks per Flex query block
        r = block // M
        visited_any = visited_any.view(heads, nqb // r, r, nkb).any(2)
        visited_all = visited_all.view(heads, nqb // r, r, nkb).all(2)

    def listed(m):
        num = m.sum(-1, dtype=torch.int32)
        idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return num[None].contiguous(), idx[None].contiguous()

    kv_num, kv_idx = listed(visited_any & ~visited_all)
    full_num, full_idx = listed(visited_all)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=fg_mask_mod(table, M, N))


def best_flex(flex, q, k, v, plan, block_sizes, fg_out, res, label):
    """The faster of FlexAttention's block sizes for this plan (3 timed calls each after compilation), or None.
    Records the block size, its time, and FG vs Flex relative L2."""
    table = plan.group_mask().contiguous()
    if table.numel() >= 2**31:  # the mask_mod's lookup would index past int32 in the generated kernel
        res[f"flex_fg_{label}_skipped"] = (f"group table of {table.numel()} entries (>= 2^31): FlexAttention's "
                                           "generated kernel indexes it with int32 (illegal memory access)")
        print(f"  flex {label}: skipped ({res[f'flex_fg_{label}_skipped']})", flush=True)
        return None
    best = None
    for block in block_sizes:
        try:
            mask = flex_block_mask(table, plan.tokens, plan.query_block, plan.key_group, block)
            options = None if block == 128 else {"BLOCK_M": block, "BLOCK_N": block}
            fn = (lambda mask=mask, options=options: flex(q, k, v, block_mask=mask, kernel_options=options))
            out = fn()  # compiles on first use of a shape
            res[f"check_fg_{label}_vs_flex_b{block}_rel_l2"] = round(rel_l2(fg_out, out), 5)
            del out
            ms = timed(fn, 1, 3, inner=1)[0]
        except (torch.cuda.OutOfMemoryError, RuntimeError, ValueError) as e:  # report and go on
            res[f"flex_fg_{label}_b{block}_skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"  flex {label} block {block}: skipped ({res[f'flex_fg_{label}_b{block}_skipped']})", flush=True)
            torch.cuda.empty_cache()
            continue
        print(f"  flex {label} block {block}: {ms:.2f} ms", flush=True)
        if best is None or ms < best[0]:
            best = (ms, block, fn)
    if best is None:
        return None
    res[f"flex_fg_{label}_block_size"] = best[1]
    return best[2]


def sta_visited_pairs(video, window):
    """Exact (query, key) pairs per head of STA without text on a video that the tile divides."""
    return math.prod(video) * math.prod(window) * math.prod(TILE)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results", help="folder of the JSON file")
    p.add_argument("--json", help="write the results here instead of <out>/<gpu>-<workload>-fg.json")
    p.add_argument("--quick", action="store_true", help="a small shape (18x16x40, 4 heads): smoke test")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sparsities", default="0.5,0.7,0.9")
    p.add_argument("--kinds", default="random,local")
    p.add_argument("--key-groups", default="1,16")
    p.add_argument("--query-block", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--flex-block-sizes", default="128,64")
    a = p.parse_args()
    workload = "quick" if a.quick else "hunyuan-720p"
    video, heads, sta_windows = WORKLOADS[workload]
    S, M = math.prod(video), a.query_block
    sparsities = [float(s) for s in a.sparsities.split(",")]
    kinds = a.kinds.split(",")
    key_groups = [int(n) for n in a.key_groups.split(",")]
    block_sizes = [int(b) for b in a.flex_block_sizes.split(",")]
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    gpu = "h200" if "H200" in name else "h100" if "H100" in name else name.replace(" ", "_").lower()
    mm, bw = ceilings()
    res = {"gpu": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(), "workload": workload,
           "video": video, "tile": TILE, "heads": heads, "head_dim": D, "dtype": "bf16", "batch": 1,
           "query_block": M, "rounds": a.reps,
           "statistic": "median over interleaved rounds (every method once per round, rotating order); CUDA events "
                        "around 1 call (attention) or the mean of 3 back-to-back calls (mask builds)",
           "flex_mask": "BlockMask.from_kv_blocks from the FG plan: FULL blocks where the plan covers the whole block, "
                        "partial blocks with a mask_mod looking up bool [heads, query blocks, key groups]; best of "
                        "block sizes " + a.flex_block_sizes + "; create_block_mask not used (it materializes the "
                        "115,200^2 element mask)",
           "bf16_matmul_8192_tflops": round(mm, 1), "device_copy_tb_s": round(bw, 2)}
    print(f"{name}: bf16 matmul {mm:.0f} TFLOP/s, copy {bw:.2f} TB/s; {workload}: video {video}, {heads} heads, "
          f"{S} tokens", flush=True)
    flex = None
    if not a.no_flex:
        from torch._dynamo import config as dynamo_config
        from torch.nn.attention.flex_attention import flex_attention
        for knob in ("cache_size_limit", "recompile_limit"):  # one compilation per (N, block size)
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, 64)
        flex = torch.compile(flex_attention, dynamic=False)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, heads, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dense_pairs = heads * S * S

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)

    methods = [("cudnn_dense_fwd_ms", cudnn, dense_pairs, 1)]  # (key, fn, visited pairs or None, calls per timing)
    for s in sparsities:
        w = sta_windows.get(s)
        if w is None:
            continue
        label = "x".join(map(str, w))
        grid = [cdiv(x, t) for x, t in zip(video, TILE)]
        res[f"tileattn_sta_{label}_sparsity"] = round(1 - math.prod(w) / math.prod(grid), 4)
        sta = (lambda w=w: tileattn.sta_attention(q, k, v, video, window=w))
        methods.append((f"tileattn_sta_{label}_fwd_ms", sta, heads * sta_visited_pairs(video, w), 1))
    for kind in kinds:
        for N in key_groups:
            for s in sparsities:
                label = f"{kind}{'' if M == 128 else f'_m{M}'}_n{N}_s{s:.2f}"
                plan, kw = build_plan(S, heads, M, N, s, kind, video, a.seed)
                measured = plan.sparsity()
                res[f"tileattn_fg_{label}_sparsity"] = round(measured, 4)
                visited = round((1 - measured) * dense_pairs)
                fg = (lambda plan=plan: tileattn.fg_attention(q, k, v, plan))
                out = fg()
                res[f"check_fg_{label}_finite"] = bool(torch.isfinite(out).all())
                methods.append((f"tileattn_fg_{label}_fwd_ms", fg, visited, 1))
                methods.append((f"fg_mask_build_{label}_ms",
                                lambda plan=plan, s=s, N=N, kw=kw: tileattn.synthetic_fg_plan(
                                    S, heads, M, N, s, out=plan, **kw), None, 3))
                print(f"  fg {label}: sparsity {measured:.4f}, capacity {plan.capacity}", flush=True)
                if flex is not None:
                    fn = best_flex(flex, q, k, v, plan, block_sizes, out, res, label)
                    if fn is not None:
                        methods.append((f"flex_fg_{label}_fwd_ms", fn, visited, 1))
                del out
    for key, fn, _, inner in methods:  # warm-up
        timed(fn, a.warmup, 1, inner=inner)
    medians = interleaved_rounds([(key, fn) for key, fn, _, _ in methods], a.reps, res,
                                 inner={key: inner for key, _, _, inner in methods})
    for key, _, visited, _ in methods:
        res[key] = round(medians[key], 3)
        if visited is not None:
            res[key.replace("_ms", "_tflops")] = round(4 * D * visited / (medians[key] * 1e9), 1)
    for key in [k for k in res if k.startswith("tileattn_") and k.endswith("_fwd_ms")]:
        res[key.replace("_fwd_ms", "_speedup_vs_cudnn_dense")] = round(res["cudnn_dense_fwd_ms"] / res[key], 2)
        flex_key = key.replace("tileattn_", "flex_")
        if flex_key in res:
            res[key.replace("_fwd_ms", "_speedup_vs_flex")] = round(res[flex_key] / res[key], 2)
    width = max(len(k) for k in res)
    for key, value in res.items():
        print(f"  {key:<{width}} {value}")
    path = pathlib.Path(a.json) if a.json else pathlib.Path(a.out) / f"{gpu}-{workload}-fg.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
