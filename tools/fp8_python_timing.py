#!/usr/bin/env python3
"""Where the Python FP8 call's time goes (device): tileattn.sta_attention native vs fp8 at hunyuan-720p 3x3x3, on
[B, H, S, D] contiguous inputs and on [B, S, H, D] ones seen as [B, H, S, D] (diffusers' layout), CUDA-event timed
in interleaved rounds, then one call of each under torch.profiler for the kernels' own durations.

    TILEATTN_LIBRARY=... PYTHONPATH=python python3 tools/fp8_python_timing.py [ROUNDS]"""
import json
import statistics
import sys

import torch

import tileattn


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.manual_seed(0)
    B, H, S, D = 1, 24, 30 * 48 * 80, 128
    bhsd = [torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    bshd = [torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    cases = {f"{p}_{lay}": (p, x) for p in ("native", "fp8") for lay, x in (("bhsd", bhsd), ("bshd", bshd))}

    def call(p, x):
        return tileattn.sta_attention(*x, video_shape=(30, 48, 80), window=(3, 3, 3), precision=p)

    times = {k: [] for k in cases}
    with torch.no_grad():
        for k, (p, x) in cases.items():
            for _ in range(3):
                call(p, x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            for k, (p, x) in cases.items():
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(11)]
                ev[0].record()
                for i in range(10):
                    call(p, x)
                    ev[i + 1].record()
                torch.cuda.synchronize()
                times[k] += [ev[i].elapsed_time(ev[i + 1]) for i in range(10)]
        res = {f"tileattn_python_{k}_3x3x3_fwd_ms": statistics.median(v) for k, v in times.items()}
        for k, v in res.items():
            print(f"{k:<45} {v:8.3f} ms")
        for k, (p, x) in cases.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                call(p, x)
                torch.cuda.synchronize()
            print(f"--- {k}: kernels of one call")
            for e in prof.key_averages():
                if e.device_time_total > 0:
                    print(f"  {e.key[:80]:<80} {e.device_time_total / 1e3:8.3f} ms x{e.count}")
    json.dump(res, open(sys.argv[2] if len(sys.argv) > 2 else "/tmp/fp8_python_timing.json", "w"), indent=1)


if __name__ == "__main__":
    main()
