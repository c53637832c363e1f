"""tileattn.distributed on the CPU: torch.distributed with gloo, 2 and 4 processes (torch.multiprocessing spawn, a
free localhost port, bounded timeouts), through the op's CPU path (the C++ reference).

Every case compares a rank's shard of the sharded result with the same slice of the single-process result computed
in that process: the standalone op sta_attention_ulysses (per-head windows, text 0 and > 0, text_valid, uneven
heads and sequence lengths, GQA, the point-to-point all-to-all, dense, autograd, a wrong shard refused), and diffusers'
real HunyuanVideoTransformer3DModel and WanTransformer3DModel (tiny configs, random weights, fp32) under
ContextParallelConfig(ulysses_degree=N) with tileattn.diffusers' STA on, against the same model without context
parallelism; ring_degree > 1 refused."""
import datetime
import importlib.util
import json
import os
import traceback

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None

TILE = (2, 2, 2)
DEADLINE_S = 150  # per world size: spawn, every case, teardown
OP_CASES = ["op_text0_per_head", "op_chunked", "op_text_valid", "op_uneven_heads_and_tokens", "op_gqa",
            "op_p2p_all_to_all", "op_dense", "op_autograd", "op_bad_shard_refused", "op_fp8"]
MODEL_CASES = ["wan_sta", "wan_strategy", "wan_dense", "hunyuan_sta", "hunyuan_strategy", "hunyuan_dense",
               "wan_head_slice", "hunyuan_head_slice"]
RING_CASES = ["ring_refused_at_enable", "ring_refused_at_call"]


# ---- what each process runs ----

def _diff(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    d = (out - ref).abs().max().item()
    return {"max_abs": d, "max_rel": d / max(ref.abs().max().item(), 1e-30)}


def _full(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _op_case(name, rank, world):
    from tileattn import sta_attention
    from tileattn import distributed as td
    B, D = 2, 16
    video = (4, 4, 6)  # grid (2, 2, 3) of 2x2x2 tiles (a window is odd or the whole axis)
    H, Hk, text, valid, window = 4, 4, 0, None, [(1, 1, 1), (2, 1, 3), (1, 2, 1), (2, 2, 1)]
    if name in ("op_text_valid", "op_p2p_all_to_all", "op_fp8"):
        text, valid = 6, torch.tensor([6, 3], dtype=torch.int32)
    elif name == "op_uneven_heads_and_tokens":
        H, Hk, text, window = 3, 3, 5, [(1, 2, 1), (2, 2, 3), (2, 1, 1)]
    elif name == "op_gqa":
        H, Hk, text, window = 8, 4, 4, [(1, 1, 1), (2, 1, 3), (1, 2, 1), (2, 2, 1)] * 2
    elif name == "op_chunked":  # two head-group chunks per rank, async exchanges
        H, Hk, text, valid = 8, 8, 6, torch.tensor([2, 6], dtype=torch.int32)
        window = window * 2
    elif name == "op_dense":
        text, window = 4, None
    S = video[0] * video[1] * video[2] + text
    q, k, v = _full(1, B, S, H, D), _full(2, B, S, Hk, D), _full(3, B, S, Hk, D)
    sizes = td.shard_sizes(S, world)
    a = sum(sizes[:rank])
    b = a + sizes[rank]
    local = [t[:, a:b] for t in (q, k, v)]
    if name == "op_bad_shard_refused":
        try:
            td.sta_attention_ulysses(q[:, :b - a + 1], k[:, :b - a + 1], v[:, :b - a + 1], video_shape=video,
                                     window=window, tile=TILE)
        except ValueError as e:
            return {"max_abs": 0.0, "max_rel": 0.0, "message": str(e), "refused": str(e).startswith("q:")}
        return {"max_abs": 1.0, "max_rel": 1.0, "refused": False}
    if name == "op_autograd":
        text, valid = 3, torch.tensor([3, 1], dtype=torch.int32)
        S = video[0] * video[1] * video[2] + text
        q, k, v = (_full(i, B, S, H, D, dtype=torch.float64).requires_grad_() for i in (4, 5, 6))
        g = _full(7, B, S, H, D, dtype=torch.float64)
        sizes = td.shard_sizes(S, world)
        a = sum(sizes[:rank])
        b = a + sizes[rank]
        local = [t[:, a:b].detach().requires_grad_() for t in (q, k, v)]
        out = td.sta_attention_ulysses(*local, video_shape=video, window=window, tile=TILE, text_len=text,
                                       text_valid=valid)
        (out * g[:, a:b]).sum().backward()
        ref = sta_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), video, window, TILE, text,
                            valid).transpose(1, 2)
        (ref * g).sum().backward()
        diffs = [_diff(out, ref[:, a:b])] + [_diff(x.grad, t.grad[:, a:b]) for x, t in zip(local, (q, k, v))]
        return {"max_abs": max(d["max_abs"] for d in diffs), "max_rel": max(d["max_rel"] for d in diffs),
                "grad_norm": float(local[0].grad.norm())}
    previous = td.A2A_MODE
    td.A2A_MODE = "p2p" if name == "op_p2p_all_to_all" else "auto"
    precision = "fp8" if name == "op_fp8" else "native"  # fp8 quantizes per head: sharding heads changes nothing
    try:
        out = td.sta_attention_ulysses(*local, video_shape=video, window=window, tile=TILE, text_len=text,
                                       text_valid=valid, chunks=2 if name == "op_chunked" else None,
                                       precision=precision)
    finally:
        td.A2A_MODE = previous
    ref = sta_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), video, window, TILE, text,
                        valid, precision=precision).transpose(1, 2)
    result = _diff(out, ref[:, a:b])
    if precision == "fp8":  # and it is the FP8 path, not native
        native = sta_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), video, window, TILE, text,
                               valid).transpose(1, 2)
        result["vs_native"] = _diff(ref, native)["max_rel"]
    if window is not None:  # the windows matter: the result is not dense attention
        dense = sta_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), video, None, TILE, text,
                              valid).transpose(1, 2)
        result["vs_dense"] = _diff(ref, dense)["max_rel"]
    return result


def _wan():
    import diffusers
    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32).eval()


def _wan_inputs():
    g = torch.Generator().manual_seed(3)
    return dict(hidden_states=torch.randn(1, 4, 4, 12, 16, generator=g),  # 4 x 6 x 8 = 192 video tokens
                timestep=torch.full((1,), 900.0), encoder_hidden_states=torch.randn(1, 9, 16, generator=g))


def _hunyuan():
    import diffusers
    torch.manual_seed(0)
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)).eval()


def _hunyuan_inputs():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :8] = True
    mask[1, :5] = True  # padded text: text_valid (8, 5)
    return dict(hidden_states=torch.randn(2, 4, 4, 12, 16, generator=g),  # 192 video tokens, 8 text tokens
                timestep=torch.full((2,), 500.0), encoder_hidden_states=torch.randn(2, 8, 16, generator=g),
                encoder_attention_mask=mask, pooled_projections=torch.randn(2, 8, generator=g),
                guidance=torch.full((2,), 3.0))


WINDOWS = [(1, 1, 1), (2, 3, 1), (1, 1, 3), (2, 1, 3)]  # per head, on the (2, 3, 4) tile grid


def _strategy(layers):
    """Per-layer, per-head windows: layer l, head h gets WINDOWS[(h + l) % 4]."""
    from tileattn import MaskStrategy
    return MaskStrategy(windows={(0, layer, h): WINDOWS[(h + layer) % 4] for layer in range(layers) for h in range(4)})


def _model_cases(which, world):
    from diffusers import ContextParallelConfig
    import tileattn.diffusers as ta
    from tileattn import distributed as td
    model, inputs = (_wan(), _wan_inputs()) if which == "wan" else (_hunyuan(), _hunyuan_inputs())
    layers = len(ta.self_attention_layers(model))
    configs = {f"{which}_sta": dict(window=WINDOWS), f"{which}_strategy": dict(strategy=_strategy(layers))}

    def forward():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    def sta(config):
        handle = ta.enable_sta(model, tile=TILE, strict=True, **config)
        try:
            return forward(), handle
        finally:
            ta.disable_sta(model)

    dense_single = forward()
    single = {name: sta(config)[0] for name, config in configs.items()}
    td.enable_context_parallel(model, ContextParallelConfig(ulysses_degree=world))
    seen = []  # the video tokens layer 0's attention gets on this rank: 192 / N under context parallelism
    spy = ta.self_attention_layers(model)[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("hidden_states", a[0] if a else None).shape[1]), with_kwargs=True)
    out = {f"{which}_dense": _diff(forward(), dense_single)}
    spy.remove()
    for name, config in configs.items():
        sta_cp, handle = sta(config)
        out[name] = _diff(sta_cp, single[name])
        out[name].update(routed={str(k): v for k, v in handle.routed.items()}, layers=handle.num_layers,
                         vs_dense=_diff(single[name], dense_single)["max_rel"])
    rank = dist.get_rank()
    out[f"{which}_head_slice"] = {"max_abs": 0.0, "max_rel": 0.0,
                                  "slice": td.ulysses_head_slice(model._parallel_config, 4),
                                  "expected": [rank * 4 // world, (rank + 1) * 4 // world],
                                  "local_video_tokens": seen, "expected_tokens": [192 // world]}
    return out


def _ring_cases():
    from diffusers import ContextParallelConfig
    import tileattn.diffusers as ta
    from tileattn import distributed as td
    out = {}
    try:
        td.enable_context_parallel(_wan(), ContextParallelConfig(ring_degree=2))
        out["ring_refused_at_enable"] = {"refused": False}
    except td.ContextParallelError as e:
        out["ring_refused_at_enable"] = {"refused": "ring_degree=2" in str(e), "message": str(e)}
    model = _wan()
    with td._cpu_device_count():  # the user's own enable_parallelism call, then STA on top
        model.enable_parallelism(config=ContextParallelConfig(ring_degree=2), cp_plan=td.wan_cp_plan(model))
    ta.enable_sta(model, window=WINDOWS, tile=TILE)
    try:
        with torch.no_grad():
            model(**_wan_inputs(), return_dict=False)
        out["ring_refused_at_call"] = {"refused": False}
    except td.ContextParallelError as e:
        out["ring_refused_at_call"] = {"refused": "ring_degree=2" in str(e), "message": str(e)}
    finally:
        ta.disable_sta(model)
    return out


def _worker(rank, world, port, outdir):
    torch.set_num_threads(1)
    results = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        for name in OP_CASES:
            results[name] = _op_case(name, rank, world)
        if HAVE_DIFFUSERS:
            import diffusers.utils.logging as dlog
            dlog.set_verbosity_error()
            for which in ("wan", "hunyuan"):
                results.update(_model_cases(which, world))
            if world == 2:
                results.update(_ring_cases())
        dist.barrier()
    except Exception:
        results["error"] = traceback.format_exc()
    finally:
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- the tests ----

_RUNS = {}


def _run(world, tmp_path_factory):
    if world not in _RUNS:
        outdir = str(tmp_path_factory.mktemp(f"gloo{world}"))
        from tileattn.distributed import spawn_local
        try:
            spawn_local(_worker, world, (outdir,), timeout=DEADLINE_S)
        except (TimeoutError, mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            _RUNS[world] = {"error": str(e)}
        if world not in _RUNS:
            ranks = []
            for r in range(world):
                with open(os.path.join(outdir, f"rank{r}.json")) as f:
                    ranks.append(json.load(f))
            _RUNS[world] = {"ranks": ranks}
            if os.environ.get("TILEATTN_DIST_REPORT"):  # the per-rank figures, for the record
                with open(f"{os.environ['TILEATTN_DIST_REPORT']}.gloo{world}.json", "w") as f:
                    json.dump(ranks, f, indent=1)
    run = _RUNS[world]
    if "error" in run:
        pytest.fail(run["error"])
    errors = [r["error"] for r in run["ranks"] if "error" in r]
    if errors:
        pytest.fail("\n".join(errors))
    return run["ranks"]


def _case(ranks, name):
    assert all(name in r for r in ranks), f"{name}: missing on some rank"
    return [r[name] for r in ranks]


WORLDS = [2, 4]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", OP_CASES)
def test_ulysses_op_equals_single_process(world, case, tmp_path_factory):
    per_rank = _case(_run(world, tmp_path_factory), case)
    worst = max(r["max_rel"] for r in per_rank)
    if case == "op_bad_shard_refused":
        assert all(r["refused"] for r in per_rank), per_rank
        return
    assert worst < 1e-5, (case, per_rank)
    if "vs_dense" in per_rank[0]:
        assert per_rank[0]["vs_dense"] > 1e-3  # the windows matter, so this is not dense vs dense
    if case == "op_autograd":
        assert all(r["grad_norm"] > 0 for r in per_rank)
    if case == "op_fp8":
        assert per_rank[0]["vs_native"] > 1e-3


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed")
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", MODEL_CASES)
def test_diffusers_context_parallel_equals_single_process(world, case, tmp_path_factory):
    per_rank = _case(_run(world, tmp_path_factory), case)
    worst = max(r["max_rel"] for r in per_rank)
    assert worst < 1e-4, (case, per_rank)
    if case.endswith("_head_slice"):
        assert all(list(r["slice"]) == r["expected"] for r in per_rank), per_rank
        assert all(r["local_video_tokens"] == r["expected_tokens"] for r in per_rank), per_rank  # sharded for real
    if case.endswith("_sta") or case.endswith("_strategy"):
        r = per_rank[0]
        assert r["routed"] == {str(i): 1 for i in range(r["layers"])}, r  # every self-attention layer ran STA
        assert r["vs_dense"] > 1e-3  # the windows matter


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed")
@pytest.mark.parametrize("case", RING_CASES)
def test_ring_attention_refused(case, tmp_path_factory):
    per_rank = _case(_run(2, tmp_path_factory), case)
    assert all(r["refused"] for r in per_rank), per_rank


# ---- bench/bench_multigpu.py's command line and summary (CPU; the benchmark itself needs 2+ GPUs) ----

def _bench():
    import importlib.util as iu
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_multigpu.py"
    spec = iu.spec_from_file_location("bench_multigpu", path)
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_multigpu_arguments(capsys):
    bench = _bench()
    args = bench.parse_args(["--gpus", "2,1,4"])
    assert args.gpus == [1, 2, 4]
    assert args.windows == {"tileattn_sta_3x3x3": (3, 3, 3), "dense": None}
    assert args.json.endswith("bench/results/h200-hunyuan-720p-multigpu.json")
    assert bench.parse_args(["--methods", "tileattn_sta_5x3x3", "--layers", "2,4"]).layers == (2, 4)
    for argv, needle in ((["--gpus", "2"], "must include 1"), (["--gpus", "1,3"], "text tokens 256"),
                         (["--methods", "flash"], "unknown method"), (["--layers", "20"], "--layers"),
                         (["--tiny", "--gpus", "1,4"], "heads 2")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert needle in capsys.readouterr().err, argv
    assert bench.MULTICAST_OFF == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                   "NVSHMEM_DISABLE_NVLS": "1"}


def test_bench_multigpu_summary():
    bench = _bench()
    raw = {1: {"tileattn_sta_3x3x3": {"step_ms": 1000.0}, "dense": {"step_ms": 3000.0}},
           2: {"tileattn_sta_3x3x3": {"step_ms": 550.0, "all_to_all_ms": 55.0, "nccl_ms": 60.0,
                                      "rel_l2_vs_gpus1": 1e-3},
               "dense": {"step_ms": 1600.0, "all_to_all_ms": None, "nccl_ms": None}}}
    res = bench.summarize(raw, [1, 2], ["tileattn_sta_3x3x3", "dense"])
    assert res["tileattn_sta_3x3x3_efficiency_gpus2"] == pytest.approx(1000.0 / (2 * 550.0))
    assert res["dense_efficiency_gpus2"] == pytest.approx(3000.0 / 3200.0)
    assert res["tileattn_sta_3x3x3_all_to_all_share_gpus2"] == pytest.approx(0.1)
    assert res["tileattn_sta_3x3x3_speedup_vs_dense_gpus2"] == pytest.approx(1600.0 / 550.0)
    assert res["tileattn_sta_3x3x3_rel_l2_vs_gpus1_gpus2"] == 1e-3
    assert "dense_all_to_all_share_gpus2" not in res and "tileattn_sta_3x3x3_efficiency_gpus1" not in res


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed")
def test_enable_context_parallel_refusals():
    """Refused before anything is installed (no process group needed)."""
    import diffusers
    from diffusers import ContextParallelConfig
    from tileattn import distributed as td
    i2v = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(4, 6, 6), image_condition_type="token_replace")
    with pytest.raises(td.ContextParallelError, match="token-replace"):
        td.enable_context_parallel(i2v, ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(td.ContextParallelError, match="ulysses_anything"):
        td.enable_context_parallel(_hunyuan(), ContextParallelConfig(ulysses_degree=2, ulysses_anything=True))
    with pytest.raises(td.ContextParallelError, match="ring_degree=2"):
        td.enable_context_parallel(_wan(), ContextParallelConfig(ring_degree=2, ulysses_degree=2))
    with pytest.raises(TypeError, match="ContextParallelConfig"):
        td.enable_context_parallel(_wan(), {"ulysses_degree": 2})
    assert td.ulysses_head_slice(None, 4) is None
    assert td.shard_sizes(101, 4) == [26, 25, 25, 25]
