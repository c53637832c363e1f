"""tileattn.dynamic_fg_plan (the GPU dynamic mask builder) against a torch fp64 re-implementation of the CPU oracle's
estimate and selection; fg_attention on its plans; `out=` reuse; errors. tileattn.FgMaskCache's reuse policy (no GPU
needed)."""
import ctypes
import math

import pytest
import torch

import tileattn
from conftest import rel_l2, requires_gpu
from tileattn import _ffi
from test_fg_attention import masked_reference


# ---- FgMaskCache (CPU) ----

class Builder:
    """A build() that records the steps it was called at and returns a fresh object each time."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return object()


def test_mask_cache_builds_every_refresh_interval_steps():
    cache, build = tileattn.FgMaskCache(3), Builder()
    assert not cache.has_plan and cache.built_step == -1 and cache.refresh_interval == 3
    plans = [cache.get(step, build) for step in range(8)]
    assert build.calls == 3  # steps 0, 3, 6
    assert plans[0] is plans[1] is plans[2] and plans[3] is plans[4] is plans[5] and plans[6] is plans[7]
    assert plans[0] is not plans[3] and plans[3] is not plans[6]
    assert cache.has_plan and cache.built_step == 6


def test_mask_cache_rebuilds_when_the_step_goes_back_or_after_a_gap():
    cache, build = tileattn.FgMaskCache(4), Builder()
    first = cache.get(5, build)
    assert cache.get(8, build) is first and build.calls == 1  # 8 - 5 < 4
    second = cache.get(9, build)                                # 9 - 5 >= 4
    assert second is not first and build.calls == 2 and cache.built_step == 9
    third = cache.get(2, build)                                 # a new sampling run
    assert third is not second and build.calls == 3 and cache.built_step == 2
    assert cache.get(2, build) is third and build.calls == 3
    cache.clear()
    assert not cache.has_plan and cache.built_step == -1
    assert cache.get(3, build) is not third and build.calls == 4


def test_mask_cache_with_interval_one_builds_every_step():
    cache, build = tileattn.FgMaskCache(1), Builder()
    for step in range(4):
        cache.get(step, build)
    assert build.calls == 4


def test_mask_cache_a_failing_build_leaves_it_empty():
    cache = tileattn.FgMaskCache(2)
    cache.get(0, Builder())

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.get(2, fail)
    assert not cache.has_plan and cache.built_step == -1


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_mask_cache_rejects_bad_refresh_interval(value):
    with pytest.raises(ValueError, match="refresh_interval"):
        tileattn.FgMaskCache(value)


def test_mask_cache_rejects_bad_step_and_build():
    cache = tileattn.FgMaskCache(2)
    with pytest.raises(ValueError, match="step"):
        cache.get(-1, Builder())
    with pytest.raises(TypeError, match="build"):
        cache.get(0, None)


# ---- dynamic_fg_plan on the GPU ----

def oracle_mass(q, k, M, N, scale=None):
    """fp64 [heads, query blocks, key groups]: the oracle's estimate (estimate_column_mass) with the GPU builder's
    pooled queries (fp32 mean of the block's rows, rounded to the input dtype)."""
    B, H, S, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    nq, G = -(-S // M), -(-S // N)
    qf = q.float()
    pooled = torch.stack([qf[:, :, i * M:min(S, (i + 1) * M)].mean(2) for i in range(nq)], 2)
    pooled = pooled.to(q.dtype).double()
    kd = k.double().repeat_interleave(H // k.shape[1], 1)
    prob = ((pooled @ kd.transpose(-1, -2)) * scale).softmax(-1)  # [B, H, nq, S]
    prob = torch.nn.functional.pad(prob, (0, G * N - S))
    return prob.view(B, H, nq, G, N).sum(-1).mean(0)


def diagonal_groups(S, H, M, N, device):
    """bool [H, nq, G]: the groups overlapping each query block's own positions."""
    nq, G = -(-S // M), -(-S // N)
    qb = torch.arange(nq, device=device)
    first, last = qb * M // N, (torch.clamp((qb + 1) * M, max=S) - 1) // N
    g = torch.arange(G, device=device)
    d = (g[None, :] >= first[:, None]) & (g[None, :] <= last[:, None])
    return d[None].expand(H, -1, -1)


def oracle_selection(mass, forced, rule, k_groups, threshold):
    """(keep, cut-off) per row: bool [H, nq, G] and fp64 [H, nq, 1]."""
    free = mass.masked_fill(forced, -1.0)
    if rule == "threshold":
        cut = torch.full(mass.shape[:2] + (1,), threshold, dtype=mass.dtype, device=mass.device)
        return forced | (free >= threshold), cut
    ranked = free.sort(-1, descending=True).values
    n_free = (~forced).sum(-1, keepdim=True)
    kth = ranked.gather(-1, (torch.clamp(n_free, max=k_groups) - 1).clamp(min=0))
    keep = forced.clone()
    order = torch.argsort(free, dim=-1, descending=True, stable=True)
    take = torch.arange(mass.shape[-1], device=mass.device)[None, None] < torch.clamp(n_free, max=k_groups)
    keep.scatter_(-1, order, take | keep.gather(-1, order))
    return keep, kth


DYN_CASES = [
    # tokens, q_heads, kv_heads, head_dim, dtype, batch, M, N, bshd
    (1000, 4, 2, 128, torch.bfloat16, 2, 64, 16, True),  # GQA, partial block and group, transposed views
    (700, 2, 2, 64, torch.float16, 1, 128, 7, False),
]


@requires_gpu
@pytest.mark.parametrize("rule", ["threshold", "top_k"])
@pytest.mark.parametrize("tokens,hq,hkv,d,dtype,batch,M,N,bshd", DYN_CASES)
def test_dynamic_plan_matches_the_oracle(rule, tokens, hq, hkv, d, dtype, batch, M, N, bshd):
    torch.manual_seed(tokens)

    def make(heads):
        if bshd:
            return torch.randn(batch, tokens, heads, d, device="cuda", dtype=dtype).transpose(1, 2)
        return torch.randn(batch, heads, tokens, d, device="cuda", dtype=dtype)

    q, k, v = make(hq), make(hkv), make(hkv)
    G = -(-tokens // N)
    threshold, k_groups = 1.5 / G, 5
    plan = tileattn.dynamic_fg_plan(q, k, M, N, rule=rule, threshold=threshold, k_groups=k_groups,
                                    capacity=G if rule == "threshold" else None)
    torch.cuda.synchronize()
    plan.check()
    mass = oracle_mass(q, k, M, N)
    forced = diagonal_groups(tokens, hq, M, N, q.device)
    keep, cut = oracle_selection(mass, forced, rule, k_groups, threshold)
    got = plan.group_mask()
    assert (got & forced).sum() == forced.sum()  # keep_diagonal holds
    near = (mass - cut).abs() <= 1e-3 * cut
    assert ((got ^ keep) & ~near).sum() == 0, f"{((got ^ keep) & ~near).sum().item()} groups differ"
    if rule == "top_k":
        assert torch.equal(got.sum(-1), keep.sum(-1))
        assert plan.capacity == min(G, k_groups + (M - 1) // N + 2)
    assert 0.0 < plan.sparsity() < 1.0
    out = tileattn.fg_attention(q, k, v, plan)
    ref, _ = masked_reference(q, k, v, plan.dense_mask())
    assert rel_l2(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


@requires_gpu
def test_dynamic_plan_out_reuse_window_and_heads_per_pass():
    torch.manual_seed(1)
    tokens, heads, M, N = 512, 4, 64, 16
    q = torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, tokens, 128, device="cuda", dtype=torch.bfloat16)
    plan = tileattn.dynamic_fg_plan(q, k, M, N, rule="top_p", p=0.8)
    out = tileattn.FgPlan.empty(tokens, heads, M, N, plan.capacity)
    out.table.fill_(12345)
    out.counts.fill_(-3)
    assert tileattn.dynamic_fg_plan(q, k, M, N, rule="top_p", p=0.8, out=out, heads_per_pass=1) is out
    assert torch.equal(out.table, plan.table) and torch.equal(out.counts, plan.counts)
    # a window: nothing outside it is kept
    window = tileattn.synthetic_fg_plan(tokens, heads, M, N, 0.5, seed=3)
    windowed = tileattn.dynamic_fg_plan(q, k, M, N, rule="top_p", p=0.8, window=window)
    windowed.check()
    assert not (windowed.group_mask() & ~window.group_mask()).any()


@requires_gpu
@pytest.mark.parametrize("change,error,needle", [
    (dict(rule="top_q"), ValueError, "rule"),
    (dict(k_groups=-1), ValueError, "k_groups"),
    (dict(rule="top_p", p=0.0), ValueError, "'p'"),
    (dict(rule="threshold", threshold=-1.0), ValueError, "'threshold'"),
    (dict(query_block=48), ValueError, "query_block"),
    (dict(heads_per_pass=99), ValueError, "heads_per_pass"),
    (dict(out="plan"), TypeError, "out"),
    (dict(window=tileattn.FgPlan.empty(256, 2, 128, 16, 4, device="cpu")), ValueError, "window"),
])
def test_dynamic_plan_names_bad_arguments(change, error, needle):
    q = torch.randn(1, 2, 512, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1, 512, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(error, match=needle):
        tileattn.dynamic_fg_plan(q, k, **change)


@requires_gpu
def test_dynamic_plan_names_bad_tensors():
    q = torch.randn(1, 2, 512, 96, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(tileattn.TileattnArgumentError, match="head_dim"):
        tileattn.dynamic_fg_plan(q, q)
    with pytest.raises(ValueError, match="kv_heads"):
        tileattn.dynamic_fg_plan(q[:, :, :, :64], torch.randn(1, 3, 512, 64, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="dtype"):
        tileattn.dynamic_fg_plan(q, q.half())


def test_dynamic_plan_rejects_cpu_tensors():
    q = torch.randn(1, 2, 256, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA"):
        tileattn.dynamic_fg_plan(q, q)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        tileattn.dynamic_fg_plan(None, q)
    with pytest.raises(ValueError, match="q must be"):
        tileattn.dynamic_fg_plan(q[0], q[0])


def test_c_abi_mirror_of_dynamic_mask_args():
    """Every field of the ctypes mirror of tileattn_dynamic_mask_args reaches the C checks (no GPU needed)."""
    try:
        lib = _ffi.dynamic_mask_library()
    except tileattn.TileattnError as e:
        pytest.skip(str(e))
    storage = (ctypes.c_uint8 * (1 << 16))()
    data = (ctypes.addressof(storage) + 255) // 256 * 256  # aligned like a device allocation
    table, counts, wtable, wcounts = (ctypes.c_int32 * 32)(), (ctypes.c_int32 * 2)(), (ctypes.c_int32 * 32)(), \
        (ctypes.c_int32 * 2)()
    out = _ffi.ColumnPlan(200, 1, 128, 16, 13, ctypes.addressof(table), ctypes.addressof(counts))

    def args(**change):
        a = _ffi.DynamicMaskArgs()
        a.abi_version, a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim = _ffi.ABI_VERSION, 0, 1, 1, 1, 128
        a.q = a.k = _ffi.Tensor(data, 0, 0, 128)
        a.rule, a.p, a.top_k, a.threshold, a.target_sparsity = _ffi.RULE_TOP_K, 0.9, 4, 0.01, 0.5
        a.keep_diagonal, a.workspace, a.workspace_bytes = 1, data, 1 << 15
        for key, value in change.items():
            setattr(a, key, value)
        return a

    bytes_ = ctypes.c_int64(0)
    assert lib.tileattn_dynamic_mask_workspace_bytes(ctypes.byref(args()), ctypes.byref(out), 0,
                                                     ctypes.byref(bytes_)) == _ffi.STATUS_OK
    assert 0 < bytes_.value <= 1 << 15
    assert lib.tileattn_dynamic_mask_workspace_bytes(ctypes.byref(args()), ctypes.byref(out), 2,
                                                     ctypes.byref(bytes_)) == _ffi.STATUS_ARGUMENT
    assert "heads_per_pass" in lib.tileattn_last_error().decode()
    bad_window = _ffi.ColumnPlan(100, 1, 128, 16, 13, ctypes.addressof(wtable), ctypes.addressof(wcounts))
    for change, needle in ((dict(abi_version=99), "abi_version"), (dict(dtype=5), "dtype"),
                           (dict(head_dim=96), "head_dim"), (dict(scale=-1.0), "scale"), (dict(rule=4), "rule"),
                           (dict(top_k=-1), "'k'"), (dict(rule=_ffi.RULE_TOP_P, p=1.5), "'p'"),
                           (dict(rule=_ffi.RULE_THRESHOLD, threshold=-1.0), "'threshold'"),
                           (dict(rule=_ffi.RULE_TARGET_SPARSITY, target_sparsity=1.0), "'target_sparsity'"),
                           (dict(text_len=201), "text_len"), (dict(window=ctypes.pointer(bad_window)), "window"),
                           (dict(workspace_bytes=16), "workspace")):
        a = args(**change)
        assert lib.tileattn_build_dynamic_column_plan(ctypes.byref(a), ctypes.byref(out), None) == \
            _ffi.STATUS_ARGUMENT, change
        assert needle in lib.tileattn_last_error().decode(), (change, lib.tileattn_last_error())
    if not lib.tileattn_gpu_kernels_available():
        assert lib.tileattn_build_dynamic_column_plan(ctypes.byref(args()), ctypes.byref(out), None) == \
            _ffi.STATUS_CUDA
