"""Several GPUs: one denoising step (one transformer forward) of diffusers' real HunyuanVideo 720p transformer (random
weights, 20 dual-stream + 40 single-stream blocks, bf16) on 1 GPU and under diffusers' Ulysses context parallelism
(ContextParallelConfig(ulysses_degree=N), through tileattn.distributed.enable_context_parallel) on N GPUs, dense
(diffusers' Ulysses with its default attention backend) and tileattn STA (tileattn.diffusers.enable_sta).

    python3 bench/bench_multigpu.py --gpus 1,2        # (and 1,2,4 when four GPUs are there)
    python3 bench/bench_multigpu.py --tiny --gpus 1,2 # a CPU smoke run of the whole script (gloo, tiny config)

One process per GPU, started by torch.multiprocessing spawn (no torchrun needed), one world size after the other.
NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are set before any NCCL init.

Results (JSON, default bench/results/h200-hunyuan-720p-multigpu.json), per method M ("dense", "tileattn_sta_3x3x3")
and GPU count N:
- M_step_ms_gpusN: the median over --rounds timed steps (after --warmup) of the slowest rank's step time.
- M_efficiency_gpusN: scaling efficiency t1 / (N * tN) (t1: the same method on one GPU). Target: >= 0.85 for STA at 2.
- M_all_to_all_ms_gpusN, M_all_to_all_share_gpusN: rank 0's NCCL all-to-all kernel time in one profiled step
  (kernels named AllToAll or SendRecv: all_to_all_single runs as grouped send/recv) and its share of the step time;
  M_nccl_ms_gpusN: every NCCL kernel (the final all-gather included). Kernel time, so with overlapped chunks the share
  is an upper bound on the exposed communication.
- M_rel_l2_vs_gpus1_gpusN: the N-GPU output against the 1-GPU output of the same method (same weights and inputs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
import traceback

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "h200-hunyuan-720p-multigpu.json"
HUNYUAN_HEADS = 24
HUNYUAN_VIDEO_TOKENS = 30 * 48 * 80  # latent (1, 16, 30, 96, 160), patch 1x2x2
HUNYUAN_TEXT = 256
TINY = dict(heads=2, video_tokens=6 * 8 * 8, text=16)  # bench_e2e's tiny HunyuanVideo config and inputs


def multicast_off() -> None:
    """The multicast-off settings the device README asks for; called before any NCCL init (and inherited by the
    spawned workers)."""
    os.environ.update(MULTICAST_OFF)


def _method(name: str):
    """'dense' -> None; 'tileattn_sta_3x3x3' -> (3, 3, 3)."""
    if name == "dense":
        return None
    m = re.fullmatch(r"tileattn_sta_(\d+)x(\d+)x(\d+)", name)
    if not m:
        raise ValueError(f"--methods: unknown method {name!r} (dense or tileattn_sta_<wt>x<wh>x<ww>)")
    return tuple(int(x) for x in m.groups())


def parse_args(argv=None):
    """The command line, validated (no GPU needed): gpus a sorted list starting at 1, methods known, every GPU count
    dividing the model's heads, video tokens and text tokens (equal Ulysses shards)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2", help="GPU counts to run, comma-separated; must include 1")
    ap.add_argument("--methods", default="tileattn_sta_3x3x3,dense")
    ap.add_argument("--layers", help="cut the model: 'dual,single' (default the full 20,40)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled step (no all-to-all share)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per GPU count before the workers are killed")
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU, gloo (a smoke run of the script)")
    ap.add_argument("--json", help=f"write the results here (default {DEFAULT_JSON.relative_to(HERE.parent)}; "
                                   "none with --tiny)")
    args = ap.parse_args(argv)
    try:
        gpus = sorted({int(x) for x in args.gpus.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--gpus: comma-separated integers, got {args.gpus!r}")
    if not gpus or gpus[0] != 1 or min(gpus) < 1:
        ap.error(f"--gpus: must include 1 (the baseline of the scaling efficiency), got {args.gpus!r}")
    args.gpus = gpus
    try:
        args.windows = {name: _method(name) for name in (m.strip() for m in args.methods.split(",")) if name}
    except ValueError as e:
        ap.error(str(e))
    if not args.windows:
        ap.error("--methods: none given")
    if args.layers:
        try:
            args.layers = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            args.layers = None
        if not args.layers or len(args.layers) != 2 or min(args.layers) < 0:
            ap.error("--layers: 'dual,single', two non-negative integers")
    if args.warmup < 0 or args.rounds < 1:
        ap.error("--warmup >= 0 and --rounds >= 1")
    heads, video, text = ((TINY["heads"], TINY["video_tokens"], TINY["text"]) if args.tiny else
                          (HUNYUAN_HEADS, HUNYUAN_VIDEO_TOKENS, HUNYUAN_TEXT))
    for n in gpus:
        bad = [f"{what} {count}" for what, count in (("heads", heads), ("video tokens", video), ("text tokens", text))
               if count % n]
        if bad:
            ap.error(f"--gpus: {n} does not divide the model's {', '.join(bad)} (Ulysses needs equal shards)")
    if args.json is None and not args.tiny:
        args.json = str(DEFAULT_JSON)
    return args


def summarize(raw: dict, gpus, methods) -> dict:
    """The result keys from the workers' raw figures: raw[n][method] = {"step_ms", "all_to_all_ms", "nccl_ms",
    "rel_l2_vs_gpus1"} (the last three may be None)."""
    res = {}
    for method in methods:
        t1 = raw.get(1, {}).get(method, {}).get("step_ms")
        for n in gpus:
            r = raw.get(n, {}).get(method)
            if r is None:
                continue
            tn = r["step_ms"]
            res[f"{method}_step_ms_gpus{n}"] = tn
            if t1 is not None and n > 1:
                res[f"{method}_efficiency_gpus{n}"] = t1 / (n * tn)
            if n > 1:
                for key in ("all_to_all_ms", "nccl_ms"):
                    if r.get(key) is not None:
                        res[f"{method}_{key}_gpus{n}"] = r[key]
                if r.get("all_to_all_ms") is not None:
                    res[f"{method}_all_to_all_share_gpus{n}"] = r["all_to_all_ms"] / tn
                if r.get("rel_l2_vs_gpus1") is not None:
                    res[f"{method}_rel_l2_vs_gpus1_gpus{n}"] = r["rel_l2_vs_gpus1"]
    if "dense" in methods:
        for method in methods:
            if method == "dense":
                continue
            for n in gpus:
                d, s = res.get(f"dense_step_ms_gpus{n}"), res.get(f"{method}_step_ms_gpus{n}")
                if d and s:
                    res[f"{method}_speedup_vs_dense_gpus{n}"] = d / s
    return res


# ---- one process per GPU ----

def _nccl_ms(prof):
    """(all-to-all ms, every NCCL kernel ms) of a profiled step, from the device kernels' names."""
    a2a = total = 0.0
    for evt in prof.key_averages():
        name = evt.key.lower()
        if "nccl" not in name:
            continue
        us = getattr(evt, "device_time_total", None)
        if us is None:
            us = getattr(evt, "cuda_time_total", 0.0)
        if getattr(evt, "device_type", None) is not None and "cuda" not in str(evt.device_type).lower():
            continue
        total += us / 1e3
        if "alltoall" in name or "sendrecv" in name:
            a2a += us / 1e3
    return a2a, total


def _worker(rank, world, port, argv, outdir):
    multicast_off()
    import torch
    import torch.distributed as dist
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "python"))
    from bench_e2e import hunyuan_inputs, hunyuan_model
    import tileattn.diffusers as ta
    from tileattn import distributed as td

    args = parse_args(argv)
    tiny = args.tiny
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    tile = (2, 4, 4) if tiny else (6, 8, 8)
    result = {}
    try:
        if not tiny:
            torch.cuda.set_device(rank)
        dist.init_process_group("gloo" if tiny else "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=args.timeout),
                                **({} if tiny else {"device_id": torch.device("cuda", rank)}))
        torch.manual_seed(0)
        model = hunyuan_model(tiny, device, dtype, args.layers)
        with torch.no_grad():
            for p in model.parameters():  # every rank (and every GPU count) the same weights
                dist.broadcast(p.data, 0)
        inputs = hunyuan_inputs(model, tiny, device, dtype)
        if world > 1:
            from diffusers import ContextParallelConfig
            td.enable_context_parallel(model, ContextParallelConfig(ulysses_degree=world))

        def step():
            if not tiny:
                torch.cuda.synchronize()
            dist.barrier()
            t = time.perf_counter()
            with torch.no_grad():
                out = model(**inputs, return_dict=False)[0]
            if not tiny:
                torch.cuda.synchronize()
            ms = torch.tensor([(time.perf_counter() - t) * 1e3], dtype=torch.float64, device=device)
            dist.all_reduce(ms, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank is done
            return ms.item(), out

        for method, window in args.windows.items():
            handle = ta.enable_sta(model, window=window, tile=tile, strict=True) if window else None
            try:
                for _ in range(args.warmup):
                    step()
                times = []
                for _ in range(args.rounds):
                    ms, out = step()
                    times.append(ms)
                a2a = nccl = None
                if world > 1 and not tiny and not args.no_profile:
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                        step()
                    a2a, nccl = _nccl_ms(prof)
                entry = {"step_ms": statistics.median(times), "rounds_ms": times, "all_to_all_ms": a2a,
                         "nccl_ms": nccl}
                if handle is not None:
                    entry["routed_calls"] = sum(handle.routed.values())
                    entry["fallbacks"] = {str(k): v for k, v in handle.fallbacks.items()}
                result[method] = entry
                if rank == 0:
                    torch.save(out.float().cpu(), os.path.join(outdir, f"out_{method}_gpus{world}.pt"))
            finally:
                if handle is not None:
                    ta.disable_sta(model)
        if rank == 0:
            result["_meta"] = {"device": "cpu" if tiny else torch.cuda.get_device_name(0), "world": world,
                               "self_attention_layers": len(ta.self_attention_layers(model)),
                               "video": list(ta.video_shape_of(model, inputs["hidden_states"]))}
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        if rank == 0 or "error" in result:
            with open(os.path.join(outdir, f"gpus{world}_rank{rank}.json"), "w") as f:
                json.dump(result, f)
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(world, argv, outdir, timeout):
    sys.path.insert(0, str(HERE.parent / "python"))
    from tileattn.distributed import spawn_local
    spawn_local(_worker, world, (argv, outdir), timeout=timeout)
    errors = []
    for r in range(world):
        path = os.path.join(outdir, f"gpus{world}_rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            if "error" in data:
                errors.append(f"rank {r}: {data['error']}")
    if errors:
        raise RuntimeError("\n".join(errors))
    with open(os.path.join(outdir, f"gpus{world}_rank0.json")) as f:
        return json.load(f)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    multicast_off()
    import torch
    if not args.tiny:
        have = torch.cuda.device_count()
        if have < max(args.gpus):
            sys.exit(f"--gpus {max(args.gpus)}: this machine has {have} CUDA device(s)")
    raw, meta = {}, {}
    with tempfile.TemporaryDirectory() as outdir:
        for n in args.gpus:
            t = time.time()
            got = _spawn(n, argv, outdir, args.timeout)
            meta[n] = got.pop("_meta", {})
            raw[n] = got
            print(f"{n} GPU(s): " + ", ".join(f"{m} {r['step_ms']:.1f} ms" for m, r in got.items()) +
                  f" ({time.time() - t:.0f} s)", flush=True)
        for n in args.gpus[1:]:
            for method in raw[n]:
                a = torch.load(os.path.join(outdir, f"out_{method}_gpus{n}.pt"))
                b = torch.load(os.path.join(outdir, f"out_{method}_gpus1.pt"))
                raw[n][method]["rel_l2_vs_gpus1"] = ((a - b).norm() / b.norm()).item()
    res = summarize(raw, args.gpus, list(args.windows))
    import diffusers
    res["_meta"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "model": "HunyuanVideoTransformer3DModel" + (" (tiny)" if args.tiny else " 720p"),
                    "layers": list(args.layers) if args.layers else "20,40", "gpus": args.gpus,
                    "methods": list(args.windows), "rounds": args.rounds, "warmup": args.warmup,
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "env": MULTICAST_OFF,
                    "per_gpu_count": {str(n): meta[n] for n in meta}, "raw": {str(n): raw[n] for n in raw}}
    print(json.dumps({k: v for k, v in res.items() if k != "_meta"}, indent=1))
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
