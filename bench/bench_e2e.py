"""End to end: one denoising step (one transformer forward) of diffusers' real video transformers with random weights
in bf16, dense against tileattn STA through tileattn.diffusers, interleaved rounds in one process.

    python3 bench/bench_e2e.py --model hunyuan --json bench/results/h200-hunyuan-720p-e2e.json
    python3 bench/bench_e2e.py --model wan --json bench/results/h200-wan-720p-e2e.json
    python3 bench/bench_e2e.py --tiny        # a CPU smoke run of the whole script on tiny configs

Methods (keys "<method>_step_ms"):
- dense_default: diffusers' default attention backend with the model's own masks (HunyuanVideo's text padding mask
  makes SDPA take its masked path).
- dense_cudnn_unmasked: every self-attention call as cuDNN SDPA without the padding mask (the fastest dense).
- tileattn_sta_<w>: tileattn.diffusers.enable_sta(window=w); tileattn_sta_calibrated: per-head windows from a strategy.
- tileattn_sta_<w>_fp8: the same with precision="fp8" (int8 Q K^T, e4m3 P V; the CPU emulation on CPU tensors), also
  compared with the bf16 method of the same window ("<method>_vs_bf16_rel_l2").
- flex_sta_3x3x3 (HunyuanVideo; its 30x48x80 grid is whole tiles): FlexAttention with the STA block mask, q/k/v
  permuted to tile-major and back in every call (what a pipeline using it pays); it ignores the text padding.
- attention_free: every self-attention call returns zeros (the floor no attention method can beat).
- tileattn_sta_full: a window wider than the grid (clamped: every tile), which must equal dense to rounding.
- With --cache: diffusers' FirstBlockCache with STA 3x3x3 over --cache-steps steps, its mean step time against
  dense_default (no cache).
- With --denoise-steps N: N real denoising steps (diffusers' FlowMatchEulerDiscreteScheduler, the scheduler of the
  HunyuanVideo and Wan pipelines) from the same latent with bf16 STA 3x3x3, FP8 STA 3x3x3 and the first dense method
  listed, where listed; the final latents' relative L2 ("final_latent_rel_l2_<a>_vs_<b>").
The 50-step projection is 50 x the step time. Correctness in the same run: the output of each method against
dense_default (relative L2), on the same inputs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import tileattn  # noqa: E402
import tileattn.diffusers as ta  # noqa: E402
from tileattn import _intercept  # noqa: E402

HUNYUAN_720P = dict(latent=(1, 16, 30, 96, 160), text=256, valid=160)
WAN_720P = dict(latent=(1, 16, 21, 90, 160), text=512)


def hunyuan_model(tiny, device, dtype, layers=None):
    from diffusers import HunyuanVideoTransformer3DModel
    if tiny:
        cfg = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                   num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
                   rope_axes_dim=(4, 6, 6))
    else:
        cfg = {}  # HunyuanVideo's own config: 20 dual-stream + 40 single-stream blocks, 24 heads x 128
    if layers:
        cfg.update(num_layers=layers[0], num_single_layers=layers[1])
    with torch.device(device):
        model = HunyuanVideoTransformer3DModel(**cfg).to(dtype).eval()
    return model


def hunyuan_inputs(model, tiny, device, dtype, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    latent, text, valid = ((1, 4, 6, 16, 16), 16, 10) if tiny else \
        (HUNYUAN_720P["latent"], HUNYUAN_720P["text"], HUNYUAN_720P["valid"])
    mask = torch.zeros(latent[0], text, dtype=torch.bool, device=device)
    mask[:, :valid] = True
    cfg = model.config
    return dict(hidden_states=torch.randn(latent, generator=g, device=device, dtype=dtype),
                timestep=torch.full((latent[0],), 900.0, device=device),
                encoder_hidden_states=torch.randn(latent[0], text, cfg.text_embed_dim, generator=g, device=device,
                                                  dtype=dtype),
                encoder_attention_mask=mask,
                pooled_projections=torch.randn(latent[0], cfg.pooled_projection_dim, generator=g, device=device,
                                               dtype=dtype),
                guidance=torch.full((latent[0],), 6.0, device=device, dtype=dtype))


def wan_model(tiny, device, dtype, layers=None):
    from diffusers import WanTransformer3DModel
    if tiny:
        cfg = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=16,
                   freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
    else:  # Wan 2.1 14B: 40 blocks, 40 heads x 128, ffn 13824, text 4096
        cfg = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, in_channels=16,
                   out_channels=16, text_dim=4096)
    if layers:
        cfg.update(num_layers=layers[0])
    with torch.device(device):
        return WanTransformer3DModel(**cfg).to(dtype).eval()


def wan_inputs(model, tiny, device, dtype, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    latent, text = ((1, 4, 6, 16, 16), 9) if tiny else (WAN_720P["latent"], WAN_720P["text"])
    return dict(hidden_states=torch.randn(latent, generator=g, device=device, dtype=dtype),
                timestep=torch.full((latent[0],), 900.0, device=device),
                encoder_hidden_states=torch.randn(latent[0], text, model.config.text_dim, generator=g, device=device,
                                                  dtype=dtype))


class CallHandler(ta.ModelHooks):
    """Answers every self-attention call with fn(call, video) (baselines that are not STA)."""

    def __init__(self, model, fn):
        super().__init__([model])
        self.fn = fn

    def on_call(self, layer, call, video):
        return self.fn(call, video)


def cudnn_unmasked(call, video):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = call.bhsd()
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if q.is_cuda else [SDPBackend.MATH]
    with _intercept.suspended(), sdpa_kernel(backends):
        return call.from_bhsd(F.scaled_dot_product_attention(q, k, v))


def attention_free(call, video):
    return torch.zeros_like(call.query)


def flex_sta(window, tile):
    """FlexAttention with the STA plan's block mask (StaPlan.block_mask: FULL blocks on whole tiles such as
    hunyuan-720p's, the anchors' baseline) over tile-major tokens; q/k/v are permuted to tile-major and back in each
    call, as a pipeline using it would."""
    from torch.nn.attention.flex_attention import flex_attention
    from tileattn.sta import _tile_major_order
    compiled = torch.compile(flex_attention, dynamic=False)
    cache = {}

    def fn(call, video):
        q, k, v = call.bhsd()
        text = q.shape[2] - math.prod(video)
        key = (tuple(video), text, q.device)
        if key not in cache:
            order = _tile_major_order(video, tile, text, q.device)
            plan = tileattn.StaPlan(video, window, tile, text)
            cache[key] = (plan.block_mask(q.device), order, torch.argsort(order))
        mask, order, inverse = cache[key]
        qt, kt, vt = (x.index_select(2, order) for x in (q, k, v))
        with _intercept.suspended():
            out = compiled(qt, kt, vt, block_mask=mask)
        return call.from_bhsd(out.index_select(2, inverse))
    return fn


def calibrated_strategy(path, layers):
    """The per-head windows of a calibration at its first step, its layers repeated over the model's layers (a
    stand-in for a calibration of every layer)."""
    base = tileattn.MaskStrategy.read(path)
    step = min(s for s, _, _ in base.windows)
    base_layers = sorted({layer for s, layer, _ in base.windows if s == step})
    heads = sorted({h for s, _, h in base.windows if s == step})
    windows = {(0, target, h): base.windows[(step, base_layers[target % len(base_layers)], h)]
               for target in range(layers) for h in heads}
    return tileattn.MaskStrategy(windows=windows, tile=base.tile)


def timed_step(model, inputs, device):
    if device == "cuda":
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        with torch.no_grad():
            out = model(**inputs, return_dict=False)[0]
        b.record()
        b.synchronize()
        return a.elapsed_time(b), out
    t = time.perf_counter()
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return (time.perf_counter() - t) * 1e3, out


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def denoise(model, inputs, device, available, methods, steps):
    """`steps` denoising steps with diffusers' FlowMatchEulerDiscreteScheduler from the same latent, as the
    HunyuanVideo / Wan pipelines run them (timestep = t.expand(batch)), for bf16 STA 3x3x3, FP8 STA 3x3x3 and the
    first dense method among `methods`; returns the final latents' relative L2 between them and each loop's time."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    names = [m for m in ("dense_cudnn_unmasked", "dense_default") if m in methods][:1] + \
        [m for m in ("tileattn_sta_3x3x3", "tileattn_sta_3x3x3_fp8") if m in methods]
    finals, res = {}, {"denoise_steps": steps, "denoise_scheduler": "FlowMatchEulerDiscreteScheduler"}
    for m in names:
        install, remove = available[m]
        scheduler = FlowMatchEulerDiscreteScheduler()
        scheduler.set_timesteps(steps, device=device)
        latents = inputs["hidden_states"].clone()
        h = install()  # a fresh handle: its step counter starts at the first timestep
        total = 0.0
        try:
            for t in scheduler.timesteps:
                step_inputs = dict(inputs, hidden_states=latents,
                                   timestep=t.expand(latents.shape[0]).to(inputs["timestep"].dtype))
                ms, out = timed_step(model, step_inputs, device)
                total += ms
                latents = scheduler.step(out, t, latents, return_dict=False)[0]
        finally:
            remove(h)
        finals[m] = latents.float().cpu()
        res[f"{m}_denoise_total_ms"] = total
        print(f"  denoise {m}: {steps} steps in {total:.1f} ms", flush=True)
    short = {"tileattn_sta_3x3x3": "bf16_sta_3x3x3", "tileattn_sta_3x3x3_fp8": "fp8_sta_3x3x3"}
    for a, b in (("tileattn_sta_3x3x3_fp8", "tileattn_sta_3x3x3"), ("tileattn_sta_3x3x3", names[0]),
                 ("tileattn_sta_3x3x3_fp8", names[0])):
        if a in finals and b in finals and a != b:
            res[f"final_latent_rel_l2_{short[a]}_vs_{short.get(b, 'dense')}"] = rel(finals[a], finals[b])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["hunyuan", "wan"], default="hunyuan")
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (a smoke run of the script)")
    ap.add_argument("--layers", help="cut the model: 'dual,single' (HunyuanVideo) or 'blocks' (Wan)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timed rounds after one warm-up round")
    ap.add_argument("--methods", default="dense_default,dense_cudnn_unmasked,tileattn_sta_3x3x3,tileattn_sta_5x5x5,"
                    "tileattn_sta_calibrated,flex_sta_3x3x3,attention_free")
    ap.add_argument("--strategy", default=str(pathlib.Path(__file__).resolve().parent.parent /
                                              "docs/calibration/hunyuan-h100/t0.6/windows.json"))
    ap.add_argument("--cache", action="store_true", help="also FirstBlockCache + STA vs dense without cache")
    ap.add_argument("--cache-steps", type=int, default=6)
    ap.add_argument("--cache-threshold", type=float, default=0.05)
    ap.add_argument("--denoise-steps", type=int, default=0,
                    help="also N scheduler steps with bf16 and FP8 STA 3x3x3 (and dense), final latents compared")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    build, make_inputs = (hunyuan_model, hunyuan_inputs) if args.model == "hunyuan" else (wan_model, wan_inputs)
    t0 = time.time()
    model = build(args.tiny, device, dtype, layers)
    inputs = make_inputs(model, args.tiny, device, dtype)
    n_layers = len(ta.self_attention_layers(model))
    video = ta.video_shape_of(model, inputs["hidden_states"])
    tile = (2, 4, 4) if args.tiny else (6, 8, 8)
    print(f"{args.model}: {n_layers} self-attention layers, video {video}, built in {time.time() - t0:.1f} s",
          flush=True)

    def sta(window=None, strategy=None, precision=None):
        def install():
            return ta.enable_sta(model, window=window, strategy=strategy, tile=tile, strict=True, precision=precision)
        return install, lambda h: ta.disable_sta(model)

    def handler(fn):
        def install():
            h = CallHandler(model, fn)
            h._install()
            return h
        return install, lambda h: h.remove()

    available = {
        "dense_default": (lambda: None, lambda h: None),
        "dense_cudnn_unmasked": handler(cudnn_unmasked),
        "tileattn_sta_full": sta(window=(999, 999, 999)),  # clamped to the grid: must equal dense
        "tileattn_sta_3x3x3": sta(window=(3, 3, 3)),
        "tileattn_sta_5x5x5": sta(window=(5, 5, 5)),
        "tileattn_sta_3x3x3_fp8": sta(window=(3, 3, 3), precision="fp8"),
        "tileattn_sta_5x5x5_fp8": sta(window=(5, 5, 5), precision="fp8"),
        "attention_free": handler(attention_free),
    }
    if not args.tiny:
        available["tileattn_sta_calibrated"] = sta(strategy=calibrated_strategy(args.strategy, n_layers))
        # Whole tiles of a multiple of 128 tokens: the FULL-block mask (anything else is a mask_mod per pair).
        if all(n % t == 0 for n, t in zip(video, tile)) and math.prod(tile) % 128 == 0:
            available["flex_sta_3x3x3"] = handler(flex_sta((3, 3, 3), tile))
    methods = [m for m in args.methods.split(",") if m in available]
    skipped = [m for m in args.methods.split(",") if m not in available]

    times = {m: [] for m in methods}
    outputs = {}
    for r in range(args.rounds + 1):  # round 0 warms up (compiles Flex, loads kernels) and is not counted
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for m in order:
            install, remove = available[m]
            h = install()
            try:
                ms, out = timed_step(model, inputs, device)
            finally:
                remove(h)
            if r > 0:
                times[m].append(ms)
            if r == 0:
                outputs[m] = out.float().cpu()
            del out
            print(f"  round {r} {m}: {ms:.1f} ms", flush=True)

    res = {"date": datetime.date.today().isoformat(), "model": args.model, "layers": n_layers,
           "video_tokens": list(video), "tile": list(tile),
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
           "torch": torch.__version__, "rounds": args.rounds, "skipped_methods": skipped}
    if args.model == "hunyuan":
        res["text_tokens"] = inputs["encoder_hidden_states"].shape[1]
        res["text_valid"] = int(inputs["encoder_attention_mask"].sum())
    for m in methods:
        t = sorted(times[m])
        res[f"{m}_step_ms"] = t[len(t) // 2]
        res[f"{m}_step_ms_all"] = t
        res[f"{m}_50_steps_s"] = round(50 * t[len(t) // 2] / 1e3, 1)
        res[f"{m}_vs_dense_default_rel_l2"] = rel(outputs[m], outputs["dense_default"]) \
            if "dense_default" in outputs else None
        bf16 = m[:-len("_fp8")] if m.endswith("_fp8") else None
        if bf16 in outputs:
            res[f"{m}_vs_bf16_rel_l2"] = rel(outputs[m], outputs[bf16])
    base = res.get("dense_default_step_ms")
    best = res.get("dense_cudnn_unmasked_step_ms")
    for m in methods:
        if base:
            res[f"{m}_speedup_vs_dense_default"] = round(base / res[f"{m}_step_ms"], 3)
        if best:
            res[f"{m}_speedup_vs_dense_cudnn_unmasked"] = round(best / res[f"{m}_step_ms"], 3)

    if args.cache:  # FirstBlockCache + STA 3x3x3 over several steps, against dense without cache (above)
        from diffusers.hooks import FirstBlockCacheConfig
        timesteps = torch.linspace(950, 50, args.cache_steps).tolist()
        model.enable_cache(FirstBlockCacheConfig(threshold=args.cache_threshold))
        ta.enable_sta(model, window=(3, 3, 3), tile=tile, strict=True)
        step_ms = []
        try:
            with model.cache_context("cond"):
                for t in timesteps:
                    ms, out = timed_step(model, dict(inputs, timestep=torch.full_like(inputs["timestep"], t)), device)
                    step_ms.append(ms)
        finally:
            ta.disable_sta(model)
            model.disable_cache()
        mean = sum(step_ms) / len(step_ms)
        res["tileattn_sta_3x3x3_first_block_cache_mean_step_ms"] = mean
        res["tileattn_sta_3x3x3_first_block_cache_step_ms_all"] = step_ms
        res["cache"] = {"kind": "FirstBlockCache", "threshold": args.cache_threshold, "steps": len(timesteps),
                        "note": "random weights and one latent: how often the cache skips says nothing about a "
                                "trained model; the figure shows the two compose"}
        if base:
            res["tileattn_sta_3x3x3_first_block_cache_speedup_vs_dense_default"] = round(base / mean, 3)
        print(f"  STA 3x3x3 + FirstBlockCache: {mean:.1f} ms per step over {len(timesteps)} steps: {step_ms}",
              flush=True)

    if args.denoise_steps > 0:
        res.update(denoise(model, inputs, device, available, methods, args.denoise_steps))

    print(json.dumps({k: v for k, v in res.items() if not k.endswith("_all")}, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
