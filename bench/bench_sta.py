#!/usr/bin/env python3
"""STA forward (and with --backward, backward) benchmark, hunyuan-720p (B=1, 24 heads, 30x48x80, tile 6x8x8, D=128, bf16), in ONE run on the same
inputs: tileattn STA at several windows and dense (same kernel), cuDNN SDPA dense, FlexAttention with the same STA
block mask (full 128x128 blocks, no mask_mod, tile-major tokens as in ../shared/ANCHORS.md). CUDA events, median of
--reps after --warmup. Checks tileattn against FlexAttention (relative L2) on the same inputs. Writes
<out>/<gpu>-hunyuan-720p.json with every time in ms, TFLOP/s and ratios.

Backward (text 0): tileattn STA 3x3x3 / 5x5x5 (fast and deterministic dQ), cuDNN SDPA dense backward and
FlexAttention STA backward, each timed as torch.autograd.grad of a retained graph (the backward alone).

Usage: python3 bench/bench_sta.py --out bench/results [--reps 10] [--texts 0,256] [--backward]
"""
import argparse
import datetime
import json
import math
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import tileattn  # noqa: E402
from tileattn.sta import _tile_major_order  # noqa: E402

VIDEO, TILE, HEADS, D = (30, 48, 80), (6, 8, 8), 24, 128
WINDOWS = {"3x3x3": (3, 3, 3), "5x3x5": (5, 3, 5), "5x5x5": (5, 5, 5)}


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
    """Exact (query, key) pairs per head, from the STA plan's sparsity."""
    plan = tileattn.StaPlan(VIDEO, window, TILE, text)
    return (1.0 - plan.sparsity()) * plan.tokens ** 2


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def ceilings():
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms, _ = timed(lambda: x @ x, 3, 10)
    big = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    cms, _ = timed(lambda: dst.copy_(big), 3, 10)
    return 2 * 8192 ** 3 / (ms * 1e9), 2 * big.numel() / (cms * 1e9)  # TFLOP/s, TB/s (bytes read + written)


def gpu_state():
    """SM clock (MHz) and power (W) right now, through NVML if available."""
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM), pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
    except Exception:  # noqa: BLE001 - optional instrumentation
        return None, None


def interleaved_rounds(methods, reps, res, inner=None):
    """Times every (key, fn) of `methods` once per round, in an order rotated each round, for `reps` rounds (`timed`
    with inner[key] back-to-back calls, default 3); logs SM clock and power after each round and records their range
    in res. Returns the median per key."""
    times = {key: [] for key, _ in methods}
    clocks, powers = [], []
    for r in range(reps):
        shift = r % len(methods)
        for key, fn in methods[shift:] + methods[:shift]:
            times[key].append(timed(fn, 0, 1, (inner or {}).get(key, 3))[0])
        clock, power = gpu_state()
        if clock:
            clocks.append(clock), powers.append(power)
        print(f"  round {r + 1}/{reps} done (SM clock {clock} MHz, power {power} W)", flush=True)
    if clocks:
        res["sm_clock_mhz_min_median_max"] = [min(clocks), sorted(clocks)[len(clocks) // 2], max(clocks)]
        res["power_w_min_median_max"] = [round(min(powers)), round(sorted(powers)[len(powers) // 2]), round(max(powers))]
    return {key: sorted(t)[len(t) // 2] for key, t in times.items()}


BACKWARD_WINDOWS = ("3x3x3", "5x5x5")


def backward_methods(res, flex):
    """(key, fn, window, text) for backward timings at text 0: each fn is torch.autograd.grad of a retained graph,
    so only the backward kernels run. Also checks tileattn's gradients against FlexAttention's on the same inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    S = math.prod(VIDEO)
    q, k, v = (torch.randn(1, HEADS, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(1, HEADS, S, D, device="cuda", dtype=torch.bfloat16)
    order = _tile_major_order(VIDEO, TILE, 0, q.device)

    def grad_of(out, inputs, upstream, deterministic=False):
        def fn():
            torch.use_deterministic_algorithms(deterministic)
            try:
                return torch.autograd.grad(out, inputs, upstream, retain_graph=True)
            finally:
                torch.use_deterministic_algorithms(False)
        return fn

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        dense_out = F.scaled_dot_product_attention(q, k, v)
    methods = [("cudnn_dense_bwd_ms", grad_of(dense_out, (q, k, v), grad_out), None, 0)]
    for label in BACKWARD_WINDOWS:
        w = WINDOWS[label]
        out = tileattn.sta_attention(q, k, v, VIDEO, window=w)
        methods.append((f"tileattn_sta_{label}_bwd_ms", grad_of(out, (q, k, v), grad_out), w, 0))
        methods.append((f"tileattn_sta_{label}_bwd_deterministic_ms", grad_of(out, (q, k, v), grad_out, True), w, 0))
        if flex is not None:
            qt, kt, vt = (x.detach().index_select(2, order).requires_grad_(True) for x in (q, k, v))
            flex_out = flex(qt, kt, vt, block_mask=tileattn.StaPlan(VIDEO, w, TILE).block_mask(q.device))
            # Same loss on both sides: the upstream gradient in tile-major order for FlexAttention.
            flex_fn = grad_of(flex_out, (qt, kt, vt), grad_out.index_select(2, order))
            g_flex, g_ours = flex_fn(), grad_of(out, (q, k, v), grad_out)()
            for name, a, b in zip("qkv", g_ours, g_flex):
                res[f"check_sta_{label}_bwd_d{name}_vs_flex_rel_l2"] = rel_l2(a.index_select(2, order), b)
            del g_flex, g_ours
            methods.append((f"flex_sta_{label}_bwd_ms", flex_fn, w, 0))
    return methods


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--reps", type=int, default=10, help="interleaved rounds; each method runs 3 calls per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--texts", default="0,256")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--backward", action="store_true", help="also time backward passes (text 0)")
    a = p.parse_args()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    gpu = "h200" if "H200" in name else "h100" if "H100" in name else name.replace(" ", "_").lower()
    mm, bw = ceilings()
    res = {"gpu": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
           "workload": "hunyuan-720p", "video": VIDEO, "tile": TILE, "heads": HEADS, "head_dim": D, "dtype": "bf16",
           "rounds": a.reps,
           "statistic": "median over interleaved rounds (every method once per round, rotating order) of the mean "
                        "of 3 back-to-back calls; CUDA events",
           "bf16_matmul_8192_tflops": round(mm, 1), "device_copy_tb_s": round(bw, 2)}
    print(f"{name}: bf16 matmul {mm:.0f} TFLOP/s, copy {bw:.2f} TB/s", flush=True)
    flex = None
    if not a.no_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    methods = []  # (key, fn, window, text)
    for text in [int(t) for t in a.texts.split(",")]:
        sfx = "" if text == 0 else f"_text{text}"
        S = math.prod(VIDEO) + text
        q, k, v = (torch.randn(1, HEADS, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        order = _tile_major_order(VIDEO, TILE, text, q.device)
        qt, kt, vt = (x.index_select(2, order) for x in (q, k, v))

        def cudnn(q=q, k=k, v=v):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v)

        def ours(w, layout="natural", q=q, k=k, v=v, qt=qt, kt=kt, vt=vt, text=text):
            if layout == "natural":
                return lambda: tileattn.sta_attention(q, k, v, VIDEO, window=w, text_len=text)
            return lambda: tileattn.sta_attention(qt, kt, vt, VIDEO, window=w, text_len=text, layout="tile_major")

        res[f"check_dense_vs_cudnn_rel_l2{sfx}"] = rel_l2(ours(None)(), cudnn())
        methods += [(f"cudnn_dense_fwd_ms{sfx}", cudnn, None, text), (f"tileattn_dense_fwd_ms{sfx}", ours(None), None, text)]
        for label, w in WINDOWS.items():
            methods.append((f"tileattn_sta_{label}_fwd_ms{sfx}", ours(w), w, text))
            if label == "3x3x3":
                methods.append((f"tileattn_sta_{label}_tilemajor_fwd_ms{sfx}", ours(w, "tile_major"), w, text))
            if flex is not None:
                mask = tileattn.StaPlan(VIDEO, w, TILE, text).block_mask(q.device)
                fn = (lambda mask=mask, qt=qt, kt=kt, vt=vt: flex(qt, kt, vt, block_mask=mask))
                ref = fn()
                res[f"check_sta_{label}_vs_flex_rel_l2{sfx}"] = rel_l2(ours(w)().index_select(2, order), ref)
                del ref
                methods.append((f"flex_sta_{label}_fwd_ms{sfx}", fn, w, text))
    if a.backward:
        methods += backward_methods(res, flex)
    for key, fn, _, _ in methods:  # warm-up (and FlexAttention compilation)
        timed(fn, a.warmup, 1)
    medians = interleaved_rounds([(key, fn) for key, fn, _, _ in methods], a.reps, res)
    for key, fn, w, text in methods:
        ms = medians[key]
        res[key] = round(ms, 3)
        gemm_flops = 10 if "_bwd" in key else 4  # backward: 5 GEMMs over the visited pairs, forward 2
        res[key.replace("_ms", "_tflops")] = round(gemm_flops * D * HEADS * visited_pairs(w, text) / (ms * 1e9), 1)
    for key in list(res):
        if key.startswith("tileattn") and key.endswith("_fwd_ms") or "_fwd_ms_text" in key and key.startswith("tileattn"):
            sfx = key.split("_fwd_ms")[1]
            cudnn = res[f"cudnn_dense_fwd_ms{sfx}"]
            res[key.replace("_fwd_ms", "_speedup_vs_cudnn_dense")] = round(cudnn / res[key], 2)
            flex_key = key.replace("tileattn", "flex")
            if flex_key in res:
                res[key.replace("_fwd_ms", "_speedup_vs_flex")] = round(res[flex_key] / res[key], 2)
    for sfx in [""] + [f"_text{t}" for t in a.texts.split(",") if t != "0"]:
        nat, tm = res.get(f"tileattn_sta_3x3x3_fwd_ms{sfx}"), res.get(f"tileattn_sta_3x3x3_tilemajor_fwd_ms{sfx}")
        if nat and tm:
            res[f"natural_order_overhead_3x3x3{sfx}"] = round(nat / tm - 1, 4)
    for label in BACKWARD_WINDOWS:
        ours = res.get(f"tileattn_sta_{label}_bwd_ms")
        if ours:
            res[f"tileattn_sta_{label}_bwd_speedup_vs_cudnn_dense"] = round(res["cudnn_dense_bwd_ms"] / ours, 2)
            if f"flex_sta_{label}_bwd_ms" in res:
                res[f"tileattn_sta_{label}_bwd_speedup_vs_flex"] = round(res[f"flex_sta_{label}_bwd_ms"] / ours, 2)
    width = max(len(k) for k in res)
    for key, value in res.items():
        print(f"  {key:<{width}} {value}")
    out_dir = pathlib.Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{gpu}-hunyuan-720p.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
