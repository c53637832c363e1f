#!/usr/bin/env python3
"""FG-Attn forward benchmark, hunyuan-720p (B=1, 24 heads, 30x48x80 video = 115,200 tokens, D=128, bf16), in ONE run
on the same inputs:
  - tileattn FG on synthetic plans built on the GPU (random and local masks at 50/70/90% sparsity, key groups
    N = 1, 8, 16, 64, query blocks M=128), and the mask build itself;
  - cuDNN SDPA dense;
  - FlexAttention with the same mask: a BlockMask built from the FG plan (BlockMask.from_kv_blocks: blocks the plan
    covers entirely are FULL, blocks it covers in part run a mask_mod that looks the key group up in a bool table
    [heads, query blocks, key groups]); block sizes 128 and 64 are tried and the faster is kept. create_block_mask is
    not used: over 115,200^2 it materializes the element mask (see ../shared/ANCHORS.md);
  - FlashInfer (--peers flashinfer, on by default when it imports): BlockSparseAttentionWrapper(backend="fa3") given
    exactly the FG plan as BSR with R = M, C = N blocks (FgPlan.to_bsr). FlashInfer's BSR is one pattern for all
    heads, so the heads are folded into the sequence: q, k, v [1, H, S, D] are viewed (no copy) as [H * S, 1, D]
    (one head) and head h's key group g becomes block column h * S/N + g, a block-diagonal BSR that is FG's per-head
    mask exactly (needs M and N to divide S). plan() is timed apart (host wall clock, synchronized; the second of two
    calls, the first is reported too), as is the plan -> BSR conversion. Its output is checked against FG's (relative
    L2 > 2e-2 is a failure: recorded, not timed, exit status 3 at the end);
  - tileattn STA at the same sparsity (tile grid 5x6x10: windows 5x6x5 = 50%, 3x6x5 = 70%, 1x6x5 = 90%).
Timing: one group of interleaved rounds per mask configuration (cuDNN dense, FG, its mask build, FlexAttention,
FlashInfer; first a group of cuDNN dense and STA): every method once per round, in a rotating order, CUDA events,
--warmup rounds dropped, the median over --reps rounds. A method that raises is dropped from its group with the
exception text recorded (<key>_error); the rest go on. Configurations run most important first (sparsity 0.7 before
the others, N = 1, 16, 8, 64, random then local); --time-budget starts no configuration that would end past it, and
the JSON is rewritten after every configuration, so a killed run keeps what it finished.
Keys: <method>_<mask>_n<N>_s<sparsity>_<what>, method in tileattn_fg / flex_fg / flashinfer_fg, e.g.
tileattn_fg_random_n1_s0.70_fwd_ms, flashinfer_fg_random_n1_s0.70_fwd_ms, flashinfer_fg_random_n1_s0.70_plan_ms,
flashinfer_fg_random_n1_s0.70_rel_l2_vs_tileattn; cudnn_dense_<mask>_n<N>_s<sparsity>_fwd_ms is cuDNN in that
group's rounds (the speedups use it), cudnn_dense_fwd_ms the median over every group.
Writes <out>/<gpu>-hunyuan-720p-fg.json (out: --out, else $OUT, else bench/results) or --json PATH. --quick: a small
shape for a smoke test.

Usage: python3 bench/bench_fg.py [--quick] [--reps 5] [--no-flex] [--peers flashinfer|none] [--time-budget 420]
       [--json PATH]
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import signal
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_sta import ceilings, gpu_state, rel_l2, timed  # noqa: E402  (puts ../python on the path)
import tileattn  # noqa: E402

D = 128
TILE = (6, 8, 8)
WORKLOADS = {
    # name: video, heads, STA window (tiles) per sparsity
    # grid 5x6x10; windows are odd or the full extent per axis, so 90% (30 tiles) is 1x6x5 (3x2x5 is not a window)
    "hunyuan-720p": ((30, 48, 80), 24, {0.5: (5, 6, 5), 0.7: (3, 6, 5), 0.9: (1, 6, 5)}),
    "quick": ((18, 16, 40), 4, {0.5: (3, 1, 5), 0.7: (3, 1, 3), 0.9: (1, 1, 3)}),          # grid 3x2x5
    "tiny": ((2, 8, 32), 2, {}),  # 512 tokens: the CPU self-test of the harness (python/tests/test_bench_fg_bsr.py)
}
DEVICE = "cuda"  # the self-test runs the harness on the CPU with emulated kernels
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
        except Exception as e:  # noqa: BLE001 - report and go on
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



REL_L2_LIMIT = 2e-2  # FlashInfer against tileattn FG on the same inputs (bf16 outputs of two fp32-accumulating kernels)
PRIORITY_KEY_GROUPS = (1, 16, 8, 64)


def err_text(e, limit=600):
    """The exception as one short line of text for the JSON."""
    s = "".join(traceback.format_exception_only(type(e), e)).strip().replace("\n", " | ")
    return s[:limit]


def config_order(kinds, key_groups, sparsities):
    """(kind, N, sparsity) most important first: sparsity 0.7 before the others (in the order given), within one
    sparsity N = 1, 16, 8, 64 (others after, ascending), each N random then local (the order of `kinds`)."""
    def n_rank(n):
        return (PRIORITY_KEY_GROUPS.index(n), 0) if n in PRIORITY_KEY_GROUPS else (len(PRIORITY_KEY_GROUPS), n)
    s_sorted = sorted(sparsities, key=lambda s: (abs(s - 0.7) > 1e-9, sparsities.index(s)))
    return [(kind, n, s) for s in s_sorted for n in sorted(key_groups, key=n_rank) for kind in kinds]


@contextlib.contextmanager
def alarm(seconds):
    """Raise TimeoutError in the main thread after `seconds` (interrupts Python-level waits such as a JIT build; a
    running CUDA kernel is not interrupted), re-fired every 10 s."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"exceeded {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 10)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class FlashInferFg:
    """FlashInfer's BlockSparseAttentionWrapper (FA3 backend) given exactly an FG plan: the plan as BSR with
    R = query_block, C = key_group (FgPlan.to_bsr with the heads folded into the sequence: q/k/v [1, H, S, D]
    contiguous seen as [H * S, 1, D], one head; head h's group g is block column h * S / N + g)."""

    def __init__(self, fi, q, k, v, backend="fa3", workspace_bytes=256 << 20):
        B, H, S, D = q.shape
        if B != 1 or not all(t.is_contiguous() for t in (q, k, v)) or k.shape[1] != H:
            raise ValueError("the folded layout needs batch 1, contiguous [1, H, S, D] q/k/v and as many kv heads")
        self.fi, self.backend, self.shape = fi, backend, q.shape
        self.q, self.k, self.v = (t[0].view(H * S, 1, D) for t in (q, k, v))  # views: no copy
        self.out = torch.empty_like(self.q)
        self.workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=q.device)
        self.wrapper = None

    def setup(self, plan, res, label):
        """Converts the plan and plans FlashInfer for it; records the conversion and plan() times in ms."""
        B, H, S, D = self.shape
        if S % plan.query_block or S % plan.key_group:
            raise ValueError(f"folding the heads needs query_block {plan.query_block} and key_group "
                             f"{plan.key_group} to divide the {S} tokens")
        self.wrapper = None  # frees the previous plan's buffers first
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        indptr, indices = plan.to_bsr(fold_heads=True)
        torch.cuda.synchronize()
        res[f"flashinfer_fg_{label}_bsr_convert_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        res[f"flashinfer_fg_{label}_bsr_blocks"] = indices.numel()
        self.wrapper = self.fi.BlockSparseAttentionWrapper(self.workspace, backend=self.backend)
        times = []
        for _ in range(2):  # the first call may load the module; the second is the plan's own cost
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            self.wrapper.plan(indptr, indices, H * S, H * S, plan.query_block, plan.key_group, 1, 1, D,
                              q_data_type=self.q.dtype, kv_data_type=self.k.dtype, o_data_type=self.q.dtype)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        res[f"flashinfer_fg_{label}_plan_first_ms"] = round(times[0], 2)
        res[f"flashinfer_fg_{label}_plan_ms"] = round(times[1], 2)
        res.setdefault("flashinfer_backend_used", str(getattr(self.wrapper, "_backend", self.backend)))

    def run(self):
        return self.wrapper.run(self.q, self.k, self.v, out=self.out)

    def output(self):
        """The last output as [1, H, S, D] (a view)."""
        return self.out.view(self.shape)

    def release(self):
        self.wrapper = None


def interleaved(methods, warmup, reps, res, group, state=None):
    """methods: [(key, fn, inner)]. warmup + reps rounds, every method once per round in an order rotated each round,
    each timed with CUDA events around `inner` back-to-back calls (bench_sta.timed); the warm-up rounds are dropped.
    A method that raises is dropped (res[<key minus _ms>_error]). Records the SM clock / power range of the group.
    state: {"clocks": [], "powers": []} collecting every group's readings (the run-wide range, in res too).
    Returns {key: median ms} of the methods that finished."""
    times = {key: [] for key, _, _ in methods}
    live = list(methods)
    clocks, powers = [], []
    for r in range(warmup + reps):
        shift = r % max(1, len(live))
        for entry in live[shift:] + live[:shift]:
            key, fn, inner = entry
            try:
                ms = timed(fn, 0, 1, inner)[0]
            except Exception as e:  # noqa: BLE001 - a failing method must not stop the others
                res[f"{key[:-3] if key.endswith('_ms') else key}_error"] = "timing: " + err_text(e)
                print(f"  {key}: dropped ({err_text(e)})", flush=True)
                live.remove(entry)
                torch.cuda.synchronize()
                continue
            if r >= warmup:
                times[key].append(ms)
        clock, power = gpu_state()
        if clock and r >= warmup:
            clocks.append(clock), powers.append(power)
    if clocks:
        res[f"rounds_{group}_sm_clock_mhz_min_median_max"] = [min(clocks), sorted(clocks)[len(clocks) // 2],
                                                             max(clocks)]
        res[f"rounds_{group}_power_w_min_median_max"] = [round(min(powers)), round(sorted(powers)[len(powers) // 2]),
                                                        round(max(powers))]
    if state is not None and clocks:
        state["clocks"] += clocks
        state["powers"] += powers
        c, w = sorted(state["clocks"]), sorted(state["powers"])
        res["sm_clock_mhz_min_median_max"] = [c[0], c[len(c) // 2], c[-1]]
        res["power_w_min_median_max"] = [round(w[0]), round(w[len(w) // 2]), round(w[-1])]
    return {key: sorted(t)[len(t) // 2] for key, t in times.items() if t}


def main():
    t_start = time.time()
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results", help="folder of the JSON file")
    p.add_argument("--json", help="write the results here instead of <out>/<gpu>-<workload>-fg.json")
    p.add_argument("--quick", action="store_true", help="a small shape (18x16x40, 4 heads): smoke test")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # 2x8x32, 2 heads: CPU self-test
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds kept per configuration")
    p.add_argument("--warmup", type=int, default=2, help="interleaved rounds dropped per configuration")
    p.add_argument("--sparsities", default="0.5,0.7,0.9")
    p.add_argument("--kinds", default="random,local")
    p.add_argument("--key-groups", default="1,8,16,64")
    p.add_argument("--query-block", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--flex-block-sizes", default="128,64")
    p.add_argument("--no-sta", action="store_true", help="leave out the STA group")
    p.add_argument("--peers", default="flashinfer",
                   help="comma list of peers: flashinfer (BlockSparseAttentionWrapper, FA3), or none")
    p.add_argument("--flashinfer-backend", default="fa3", help="BlockSparseAttentionWrapper backend (fa3: prebuilt "
                   "for sm_90a in the trimmed wheel; others may JIT-compile for minutes)")
    p.add_argument("--peer-timeout", type=float, default=150,
                   help="seconds allowed for a peer's first setup + call (module load, JIT); past it the peer is "
                        "dropped for the rest of the run (0: no limit)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds from the start: no configuration starts that would end past it, judged by the "
                        "longest finished configuration of the same N (0: no limit)")
    a = p.parse_args()
    workload = "tiny" if a.tiny else "quick" if a.quick else "hunyuan-720p"
    video, heads, sta_windows = WORKLOADS[workload]
    S, M = math.prod(video), a.query_block
    sparsities = [float(s) for s in a.sparsities.split(",")]
    kinds = a.kinds.split(",")
    key_groups = [int(n) for n in a.key_groups.split(",")]
    block_sizes = [int(b) for b in a.flex_block_sizes.split(",")]
    peers = [x for x in a.peers.split(",") if x and x != "none"]
    unknown = [x for x in peers if x != "flashinfer"]
    if unknown:
        sys.exit(f"unknown peers {unknown}; known: flashinfer, none")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    gpu = "h200" if "H200" in name else "h100" if "H100" in name else name.replace(" ", "_").lower()
    path = pathlib.Path(a.json) if a.json else pathlib.Path(a.out) / f"{gpu}-{workload}-fg.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    mm, bw = ceilings()
    res = {"gpu": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(), "workload": workload,
           "video": video, "tile": TILE, "heads": heads, "head_dim": D, "dtype": "bf16", "batch": 1,
           "query_block": M, "rounds": a.reps, "warmup_rounds": a.warmup, "args": vars(a),
           "statistic": "median over interleaved rounds per configuration (every method once per round, rotating "
                        "order, warm-up rounds dropped); CUDA events around 1 call (attention) or the mean of 3 "
                        "back-to-back calls (mask builds); speedups against cuDNN dense in the same rounds",
           "flex_mask": "BlockMask.from_kv_blocks from the FG plan: FULL blocks where the plan covers the whole block, "
                        "partial blocks with a mask_mod looking up bool [heads, query blocks, key groups]; best of "
                        "block sizes " + a.flex_block_sizes + "; create_block_mask not used (it materializes the "
                        "115,200^2 element mask)",
           "flashinfer_mask": "BlockSparseAttentionWrapper(backend=" + a.flashinfer_backend + ") with the FG plan as "
                              "BSR, R = M, C = N (FgPlan.to_bsr(fold_heads=True)): heads folded into the sequence "
                              "(q/k/v [1, H, S, D] viewed as [H*S, 1, D], num_qo_heads = num_kv_heads = 1, block "
                              "column of head h's group g = h*S/N + g), so every head keeps its own FG mask; no "
                              "element mask (FG masks are whole M x N blocks); plan_ms = the second of two plan() "
                              "calls (host wall clock, synchronized), bsr_convert_ms = FgPlan.to_bsr on the GPU",
           "bf16_matmul_8192_tflops": round(mm, 1), "device_copy_tb_s": round(bw, 2),
           "configs_done": [], "configs_skipped": [], "failures": []}
    failures = res["failures"]  # FlashInfer vs FG mismatches, in the JSON as they happen

    def dump():
        res["elapsed_s"] = round(time.time() - t_start, 1)
        path.write_text(json.dumps(res, indent=1) + "\n")

    print(f"{name}: bf16 matmul {mm:.0f} TFLOP/s, copy {bw:.2f} TB/s; {workload}: video {video}, {heads} heads, "
          f"{S} tokens", flush=True)
    fi = None
    if "flashinfer" in peers:
        try:
            import flashinfer
            res["flashinfer_version"] = str(getattr(flashinfer, "__version__", "?"))
            flashinfer.BlockSparseAttentionWrapper  # noqa: B018 - the API used, checked up front
            fi = flashinfer
            print(f"flashinfer {res['flashinfer_version']} from {getattr(flashinfer, '__file__', '?')}", flush=True)
        except Exception as e:  # noqa: BLE001 - the peer is optional
            res["flashinfer_import_error"] = err_text(e)
            print(f"FlashInfer does not import ({err_text(e)}): its columns are skipped. Install the wheels of "
                  f".peers/ (tools/device_fg_peers.sh) or pass --peers none.", flush=True)
    else:
        res["flashinfer_skipped"] = "--peers " + a.peers
    flex = None
    if not a.no_flex:
        from torch._dynamo import config as dynamo_config
        from torch.nn.attention.flex_attention import flex_attention
        for knob in ("cache_size_limit", "recompile_limit"):  # one compilation per (N, block size)
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, 64)
        flex = torch.compile(flex_attention, dynamic=False)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, heads, S, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    dense_pairs = heads * S * S
    cudnn_times = []
    gpu_readings = {"clocks": [], "powers": []}

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)

    def finish(medians, visited, group):
        """Medians into res (ms, TFLOP/s), the group's cuDNN time, speedups of tileattn against it and the peers."""
        for key, ms in medians.items():
            res[key] = round(ms, 3)
            if visited.get(key) is not None:
                res[key.replace("_ms", "_tflops")] = round(4 * D * visited[key] / (ms * 1e9), 1)
        dense = medians.get(f"cudnn_dense_{group}_fwd_ms")
        if dense is not None:
            cudnn_times.append(dense)
            res["cudnn_dense_fwd_ms"] = round(sorted(cudnn_times)[len(cudnn_times) // 2], 3)
            res["cudnn_dense_fwd_tflops"] = round(4 * D * dense_pairs / (res["cudnn_dense_fwd_ms"] * 1e9), 1)
        for key in [k for k in medians if k.startswith("tileattn_") and k.endswith("_fwd_ms")]:
            if dense is not None:
                res[key.replace("_fwd_ms", "_speedup_vs_cudnn_dense")] = round(dense / medians[key], 2)
            for peer in ("flex", "flashinfer"):
                peer_key = key.replace("tileattn_", peer + "_")
                if peer_key in medians:
                    res[key.replace("_fwd_ms", "_speedup_vs_" + peer)] = round(medians[peer_key] / medians[key], 2)

    # ---- STA and cuDNN dense (one group)
    if not a.no_sta:
        methods, visited = [("cudnn_dense_sta_fwd_ms", cudnn, 1)], {"cudnn_dense_sta_fwd_ms": dense_pairs}
        for s in sparsities:
            w = sta_windows.get(s)
            if w is None:
                continue
            label = "x".join(map(str, w))
            plan = tileattn.StaPlan(video, w, TILE)
            res[f"tileattn_sta_{label}_sparsity"] = round(plan.sparsity(), 4)
            key = f"tileattn_sta_{label}_fwd_ms"
            methods.append((key, (lambda plan=plan: tileattn.sta_attention(q, k, v, plan=plan)), 1))
            visited[key] = heads * (1 - plan.sparsity()) * plan.tokens ** 2
        print("=== STA group", flush=True)
        finish(interleaved(methods, a.warmup, a.reps, res, "sta", gpu_readings), visited, "sta")
        dump()

    # ---- one group per FG configuration, most important first
    durations = {}  # N -> longest finished configuration (s)
    for kind, N, s in config_order(kinds, key_groups, sparsities):
        label = f"{kind}{'' if M == 128 else f'_m{M}'}_n{N}_s{s:.2f}"
        predicted = durations.get(N, max(durations.values(), default=0.0))
        if a.time_budget and time.time() - t_start + predicted > a.time_budget:
            res["configs_skipped"].append(label)
            print(f"[budget] skipping {label} (elapsed {time.time() - t_start:.0f} s, predicted {predicted:.0f} s, "
                  f"budget {a.time_budget:.0f} s)", flush=True)
            dump()
            continue
        t_config = time.time()
        print(f"=== {label} (elapsed {t_config - t_start:.0f} s)", flush=True)
        plan = out = fi_peer = methods = None
        try:
            plan, kw = build_plan(S, heads, M, N, s, kind, video, a.seed)
            measured = plan.sparsity()
            res[f"tileattn_fg_{label}_sparsity"] = round(measured, 4)
            visited_pairs = round((1 - measured) * dense_pairs)
            fg = (lambda plan=plan: tileattn.fg_attention(q, k, v, plan))
            out = fg()
            res[f"check_fg_{label}_finite"] = bool(torch.isfinite(out).all())
            methods = [(f"cudnn_dense_{label}_fwd_ms", cudnn, 1), (f"tileattn_fg_{label}_fwd_ms", fg, 1),
                       (f"fg_mask_build_{label}_ms", lambda plan=plan, s=s, N=N, kw=kw: tileattn.synthetic_fg_plan(
                           S, heads, M, N, s, out=plan, **kw), 3)]
            visited = {f"cudnn_dense_{label}_fwd_ms": dense_pairs, f"tileattn_fg_{label}_fwd_ms": visited_pairs}
            print(f"  fg {label}: sparsity {measured:.4f}, capacity {plan.capacity}", flush=True)
            if flex is not None:
                fn = best_flex(flex, q, k, v, plan, block_sizes, out, res, label)
                if fn is not None:
                    methods.append((f"flex_fg_{label}_fwd_ms", fn, 1))
                    visited[f"flex_fg_{label}_fwd_ms"] = visited_pairs
            if fi is not None:
                try:
                    with alarm(a.peer_timeout if "flashinfer_backend_used" not in res else 0):
                        fi_peer = FlashInferFg(fi, q, k, v, backend=a.flashinfer_backend)
                        fi_peer.setup(plan, res, label)
                        fi_peer.run()
                        torch.cuda.synchronize()
                    err = rel_l2(fi_peer.output(), out)
                    res[f"flashinfer_fg_{label}_rel_l2_vs_tileattn"] = round(err, 6)
                    plan_ms, bsr_ms = (res[f"flashinfer_fg_{label}_{x}_ms"] for x in ("plan", "bsr_convert"))
                    print(f"  flashinfer {label}: rel L2 vs tileattn {err:.2e}, plan {plan_ms} ms, BSR {bsr_ms} ms",
                          flush=True)
                    if not err <= REL_L2_LIMIT:  # NaN fails too
                        raise AssertionError(f"MISMATCH: FlashInfer vs tileattn FG relative L2 {err:.3e} > "
                                             f"{REL_L2_LIMIT:g}")
                    methods.append((f"flashinfer_fg_{label}_fwd_ms", fi_peer.run, 1))
                    visited[f"flashinfer_fg_{label}_fwd_ms"] = visited_pairs
                except Exception as e:  # noqa: BLE001 - the peer fails alone
                    res[f"flashinfer_fg_{label}_error"] = err_text(e)
                    print(f"  flashinfer {label}: FAILED: {err_text(e)}", flush=True)
                    if isinstance(e, AssertionError):
                        failures.append(f"{label}: {e}")
                    if isinstance(e, TimeoutError):
                        res["flashinfer_dropped"] = f"first setup + call at {label}: {err_text(e)}"
                        fi = None
                    if fi_peer is not None:
                        fi_peer.release()
                    fi_peer = None
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            del out
            out = None
            finish(interleaved(methods, a.warmup, a.reps, res, label, gpu_readings), visited, label)
            res["configs_done"].append(label)
        except Exception as e:  # noqa: BLE001 - a configuration fails alone
            res[f"config_{label}_error"] = err_text(e)
            print(f"  {label}: FAILED: {err_text(e)}", flush=True)
            traceback.print_exc()
        del plan, out, fi_peer, methods
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as e:  # a sticky CUDA error (e.g. a peer's illegal address): nothing later can run
            res["fatal_error"] = f"after {label}: {err_text(e)}"
            dump()
            raise
        durations[N] = max(durations.get(N, 0.0), time.time() - t_config)
        res[f"config_{label}_elapsed_s"] = round(time.time() - t_config, 1)
        dump()
    dump()
    width = max(len(k) for k in res)
    for key, value in res.items():
        if key != "args":
            print(f"  {key:<{width}} {value}")
    print(f"wrote {path}")
    if failures:
        print("FAILED: FlashInfer disagrees with tileattn FG:\n  " + "\n  ".join(failures), flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
