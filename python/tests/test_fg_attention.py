"""tileattn.fg_attention (FG-Attn forward) against fp32 SDPA with the plan's dense mask; FgPlan's helpers; the GPU
synthetic mask builder; torch.compile and CUDA graphs; errors. Plans for the equality tests come from Python's random
(FgPlan.from_rows), independent of the library's builder."""
import ctypes
import math
import random

import pytest
import torch

import tileattn
from conftest import reference, rel_l2, requires_gpu
from tileattn import _ffi


def random_rows(tokens, heads, query_block, key_group, keep, seed, empty_rows=()):
    """One ascending list of key groups per row, each group kept with probability `keep`; rows in empty_rows get
    nothing."""
    rng = random.Random(seed)
    groups = -(-tokens // key_group)
    n_rows = heads * -(-tokens // query_block)
    return [[] if r in empty_rows else [g for g in range(groups) if rng.random() < keep] for r in range(n_rows)]


def masked_reference(q, k, v, mask, scale=None):
    """fp32 SDPA under mask [heads, S, S] with queries that see nothing set to 0 (the kernel's convention), and the
    log-sum-exp (-inf for those queries)."""
    group = q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kf = k.repeat_interleave(group, 1).float()
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    lse = scores.masked_fill(~mask[None], float("-inf")).logsumexp(-1)
    sees = mask.any(-1)[None, :, :, None]
    safe = mask | ~mask.any(-1, keepdim=True)  # rows with no key: any finite result, replaced by 0 below
    out = reference(q.float() * (scale * math.sqrt(q.shape[-1])), k, v, safe)
    return torch.where(sees, out, torch.zeros_like(out)), lse


CASES = [
    # tokens, q_heads, kv_heads, head_dim, dtype, batch, M, N, keep
    (1000, 2, 2, 128, torch.bfloat16, 1, 128, 16, 0.3),
    (777, 2, 1, 128, torch.bfloat16, 2, 64, 1, 0.3),     # GQA, N = 1, partial blocks
    (640, 4, 2, 128, torch.bfloat16, 1, 16, 100, 0.5),   # M = 16, N = 100 (partial last group)
    (1024, 2, 2, 64, torch.float16, 1, 128, 1, 0.1),     # fp16, D = 64
    (300, 3, 3, 64, torch.bfloat16, 2, 64, 16, 0.6),     # fewer tokens than one 128-row CTA
    (1500, 2, 1, 128, torch.float16, 1, 32, 7, 0.2),
]


@requires_gpu
@pytest.mark.parametrize("tokens,hq,hkv,d,dtype,batch,M,N,keep", CASES)
def test_matches_masked_sdpa(tokens, hq, hkv, d, dtype, batch, M, N, keep):
    torch.manual_seed(0)
    q = torch.randn(batch, hq, tokens, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, hkv, tokens, d, device="cuda", dtype=dtype) for _ in range(2))
    n_rows = hq * -(-tokens // M)
    plan = tileattn.FgPlan.from_rows(random_rows(tokens, hq, M, N, keep, seed=tokens, empty_rows={1, n_rows - 1}),
                                     tokens, hq, M, N, device="cuda")
    out, lse = tileattn.fg_attention(q, k, v, plan, return_lse=True)
    mask = plan.dense_mask()
    ref, ref_lse = masked_reference(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)
    sees = mask.any(-1)[None].expand_as(lse)
    assert (out[~sees[..., None].expand_as(out)] == 0).all()  # queries that see no key: exactly 0
    assert torch.isneginf(lse[~sees]).all()
    torch.testing.assert_close(lse[sees], ref_lse[sees], atol=2e-2, rtol=0)


@requires_gpu
def test_scale_and_bshd_views():
    tokens, heads, d = 900, 3, 128
    # diffusers produces [B, S, H, D] and transposes: strided views must work without copies
    q, k, v = (torch.randn(2, tokens, heads, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    plan = tileattn.FgPlan.from_rows(random_rows(tokens, heads, 64, 16, 0.4, seed=1), tokens, heads, 64, 16)
    out = tileattn.fg_attention(q, k, v, plan, scale=0.05)
    ref, _ = masked_reference(q, k, v, plan.dense_mask(), scale=0.05)
    assert rel_l2(out, ref) < 1e-2
    assert torch.equal(out, tileattn.fg_attention(q.contiguous(), k.contiguous(), v.contiguous(), plan, scale=0.05))


@requires_gpu
@pytest.mark.parametrize("M", [16, 128])
def test_all_empty_plan_gives_zeros(M):
    q, k, v = (torch.randn(1, 2, 500, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plan = tileattn.FgPlan.empty(500, 2, M, 16, capacity=4)
    out, lse = tileattn.fg_attention(q, k, v, plan, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


@requires_gpu
def test_full_plan_matches_dense_sdpa():
    tokens, heads = 1000, 2
    q, k, v = (torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plan = tileattn.synthetic_fg_plan(tokens, heads, 128, 16, sparsity=0.0)
    assert plan.sparsity() == 0.0
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert rel_l2(tileattn.fg_attention(q, k, v, plan), ref) < 1e-2


@requires_gpu
def test_torch_compile_fullgraph():
    tokens, heads = 1000, 2
    q, k, v = (torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plan = tileattn.FgPlan.from_rows(random_rows(tokens, heads, 64, 16, 0.3, seed=2), tokens, heads, 64, 16)
    fg = tileattn.fg_attention

    def f(q, k, v):
        return fg(q * 2, k, v, plan) + 1

    compiled = torch.compile(f, fullgraph=True)
    assert torch.equal(compiled(q, k, v), f(q, k, v))


@requires_gpu
@pytest.mark.parametrize("M", [64, 128])  # 64: the workspace is allocated inside the capture
def test_cuda_graph_capture_and_replay(M):
    tokens, heads = 1000, 2
    q, k, v = (torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    capacity = -(-tokens // 16)
    plan = tileattn.FgPlan.from_rows(random_rows(tokens, heads, M, 16, 0.3, seed=3), tokens, heads, M, 16,
                                     capacity=capacity)
    f = lambda: tileattn.fg_attention(q, k, v, plan)  # noqa: E731
    f()  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = f()
    q.copy_(torch.randn_like(q))  # new inputs, same buffers
    new_plan = tileattn.FgPlan.from_rows(random_rows(tokens, heads, M, 16, 0.5, seed=4), tokens, heads, M, 16,
                                         capacity=capacity)
    plan.table.copy_(new_plan.table)  # a new mask in the same plan buffers
    plan.counts.copy_(new_plan.counts)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, f())


@requires_gpu
def test_synthetic_plan_build_can_be_captured():
    plan = tileattn.synthetic_fg_plan(2048, 2, 128, 16, 0.7, seed=5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = tileattn.synthetic_fg_plan(2048, 2, 128, 16, 0.7, seed=5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.counts, plan.counts)
    assert torch.equal(captured.group_mask(), plan.group_mask())
    # rebuilding in place (out=) under a graph: a new seed each replay through the same buffers
    target = tileattn.FgPlan.empty(2048, 2, 128, 16, capacity=plan.capacity)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert tileattn.synthetic_fg_plan(2048, 2, 128, 16, 0.7, seed=5, out=target) is target
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(target.group_mask(), plan.group_mask())


@requires_gpu
def test_backward_is_not_implemented():
    q, k, v = (torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    plan = tileattn.synthetic_fg_plan(256, 2, 128, 16, 0.5)
    out = tileattn.fg_attention(q, k, v, plan)
    with pytest.raises(NotImplementedError, match="FG backward is not implemented"):
        out.sum().backward()


# ---- the synthetic builder ----

SYNTHETIC = [
    # kind, tokens, heads, M, N, sparsity, video, text
    ("random", 4096, 4, 128, 16, 0.5, None, 0),
    ("random", 4096, 4, 64, 16, 0.7, None, 0),
    ("random", 4096, 2, 128, 1, 0.9, None, 0),
    ("local", 16 * 32 * 32, 2, 128, 1, 0.7, (16, 32, 32), 0),
    ("local", 16 * 32 * 32, 2, 64, 1, 0.5, (16, 32, 32), 0),
    ("local", 16 * 32 * 32 + 256, 2, 128, 1, 0.9, (16, 32, 32), 256),
]


@requires_gpu
@pytest.mark.parametrize("kind,tokens,heads,M,N,sparsity,video,text", SYNTHETIC)
def test_synthetic_plans_are_valid_and_near_the_requested_sparsity(kind, tokens, heads, M, N, sparsity, video, text):
    plan = tileattn.synthetic_fg_plan(tokens, heads, M, N, sparsity, kind=kind, video=video, text_len=text, seed=7)
    plan.check()  # the library's validator: counts in range, rows strictly ascending
    assert plan.capacity == plan.num_key_groups
    got = plan.sparsity()
    if text:  # text rows and columns are dense: compare the video-video part only
        video_part = plan.dense_mask()[:, :tokens - text, :tokens - text]
        got = 1.0 - video_part.sum().item() / video_part.numel()
    assert abs(got - sparsity) < 0.04, (got, sparsity)
    mask = plan.dense_mask()
    assert mask.diagonal(dim1=1, dim2=2).all()  # keep_diagonal: every query sees its own position
    if text:  # text queries see everything, every query sees the text
        assert mask[:, tokens - text:, :].all() and mask[:, :, tokens - text:].all()
    again = tileattn.synthetic_fg_plan(tokens, heads, M, N, sparsity, kind=kind, video=video, text_len=text, seed=7)
    assert torch.equal(again.group_mask(), plan.group_mask())  # deterministic in the seed


@requires_gpu
def test_synthetic_plan_capacity_cuts_rows():
    plan = tileattn.synthetic_fg_plan(4096, 2, 128, 16, 0.5, capacity=8)
    plan.check()
    assert plan.capacity == 8 and int(plan.counts.max()) == 8


# ---- FgPlan on the CPU (no kernels involved) ----

def test_plan_dense_mask_and_sparsity_cpu():
    tokens, heads, M, N = 300, 2, 64, 7
    rows = random_rows(tokens, heads, M, N, 0.4, seed=8, empty_rows={0})
    plan = tileattn.FgPlan.from_rows(rows, tokens, heads, M, N, device="cpu")
    mask = plan.dense_mask()
    assert mask.shape == (heads, tokens, tokens)
    nqb = -(-tokens // M)
    for r, groups in enumerate(rows):
        h, qb = divmod(r, nqb)
        want = torch.zeros(tokens, dtype=torch.bool)
        for g in groups:
            want[g * N:(g + 1) * N] = True
        assert torch.equal(mask[h, qb * M:(qb + 1) * M], want.expand(min(M, tokens - qb * M), -1))
    assert plan.sparsity() == pytest.approx(1.0 - mask.sum().item() / mask.numel(), abs=1e-12)
    assert plan.group_mask().shape == (heads, nqb, -(-tokens // N))


def test_plan_ignores_slots_past_the_count_cpu():
    plan = tileattn.FgPlan.from_rows([[0, 1], [1]], 100, 1, 64, 50, device="cpu", capacity=3)
    plan.table[1, 1:] = torch.tensor([0, 1], dtype=torch.int32)  # garbage after the count
    assert plan.table[1].tolist() == [1, 0, 1]
    mask = plan.dense_mask()
    assert mask[0, 70, 50:].all() and not mask[0, 70, :50].any()
    assert plan.sparsity() == pytest.approx(1 - (64 * 100 + 36 * 50) / 100 ** 2)
    empty = tileattn.FgPlan.empty(100, 1, 64, 50, capacity=3, device="cpu")
    assert empty.sparsity() == 1.0 and not empty.dense_mask().any()


@pytest.mark.parametrize("rows,kwargs,needle", [
    ([[0], [1]], dict(tokens=100, heads=2), "rows"),           # 4 rows expected
    ([[1, 0], []], dict(), "ascending"),
    ([[0, 2], []], dict(), "outside"),
    ([[0, 1], []], dict(capacity=1), "capacity"),
    ([[0], []], dict(query_block=48), "query_block"),
    ([[0], []], dict(key_group=0), "key_group"),
])
def test_plan_from_rows_rejects_bad_rows(rows, kwargs, needle):
    args = dict(tokens=100, heads=1, query_block=64, key_group=50, device="cpu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        tileattn.FgPlan.from_rows(rows, **args)


def test_plan_rejects_bad_tensors():
    with pytest.raises(ValueError, match="table"):
        tileattn.FgPlan(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int32), 100, 1, 64, 16)
    with pytest.raises(ValueError, match="counts"):
        tileattn.FgPlan(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32), 100, 1, 64, 16)


def test_c_abi_names_bad_fg_arguments():
    """The ctypes mirror of tileattn_fg_forward_args reaches the C checks (no GPU needed)."""
    try:
        lib = _ffi.fg_library()
    except tileattn.LibraryNotFound as e:
        pytest.skip(str(e))
    storage = (ctypes.c_uint8 * (1 << 13))()
    data = (ctypes.addressof(storage) + 255) // 256 * 256  # aligned like a device allocation
    table, counts = (ctypes.c_int32 * 16)(), (ctypes.c_int32 * 2)()

    def args(**change):
        a = _ffi.FgForwardArgs()
        a.abi_version, a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim = _ffi.ABI_VERSION, 0, 1, 1, 1, 128
        t = _ffi.Tensor(data, 0, 0, 128)
        a.q = a.k = a.v = a.out = t
        a.plan = _ffi.ColumnPlan(200, 1, 128, 16, 8, ctypes.addressof(table), ctypes.addressof(counts))
        for key, value in change.items():
            if key.startswith("plan_"):
                setattr(a.plan, key[5:], value)
            else:
                setattr(a, key, value)
        return a

    for change, needle in ((dict(abi_version=99), "abi_version"), (dict(dtype=5), "dtype"),
                           (dict(plan_query_block=48), "query_block"), (dict(plan_key_group=0), "key_group")):
        a = args(**change)
        assert lib.tileattn_fg_forward(ctypes.byref(a), None) == _ffi.STATUS_ARGUMENT, change
        assert needle in lib.tileattn_last_error().decode(), (change, lib.tileattn_last_error())
    plan = _ffi.ColumnPlan(200, 1, 128, 16, 8, ctypes.addressof(table), ctypes.addressof(counts))
    assert lib.tileattn_build_synthetic_column_plan(ctypes.byref(plan), 9, 0.5, 0, None, 0, 1, None) == \
        _ffi.STATUS_ARGUMENT
    assert "kind" in lib.tileattn_last_error().decode()


@pytest.mark.parametrize("change,needle", [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(kind="diagonal"), "kind"),
    (dict(kind="local"), "video"),
    (dict(kind="local", video=(2, 8, 8)), "tokens"),
    (dict(query_block=100), "query_block"),
    (dict(text_len=-1), "text_len"),
    (dict(device="cpu"), "CUDA"),
    (dict(out=tileattn.FgPlan.empty(512, 2, 128, 16, capacity=4, device="cpu")), "out"),
])
def test_synthetic_plan_rejects_bad_arguments(change, needle):
    args = dict(tokens=256, heads=2, query_block=128, key_group=16, sparsity=0.5)
    args.update(change)
    with pytest.raises(ValueError, match=needle):
        tileattn.synthetic_fg_plan(**args)


@requires_gpu
@pytest.mark.parametrize("change,needle", [
    (dict(dtype=torch.float32), "bfloat16 or float16"),
    (dict(device="cpu"), "CUDA"),
    (dict(head_dim=96), "head_dim"),
    (dict(plan_tokens=512), "plan"),
    (dict(plan_heads=1), "plan"),
    (dict(plan_device="cpu"), "device"),
    (dict(kv_heads=3), "kv_heads"),
    (dict(plan=None), "FgPlan"),
])
def test_bad_inputs_name_the_problem(change, needle):
    dtype, device, d = change.pop("dtype", torch.bfloat16), change.pop("device", "cuda"), change.pop("head_dim", 128)
    kv_heads = change.pop("kv_heads", 2)
    tokens, heads = change.pop("plan_tokens", 256), change.pop("plan_heads", 2)
    q = torch.randn(1, 2, 256, d, device=device, dtype=dtype)
    k, v = (torch.randn(1, kv_heads, 256, d, device=device, dtype=dtype) for _ in range(2))
    plan = tileattn.FgPlan.from_rows([[0]] * (heads * -(-tokens // 128)), tokens, heads, 128, 16,
                                     device=change.pop("plan_device", "cuda"))
    plan = change.pop("plan", plan)
    with pytest.raises((ValueError, TypeError, tileattn.TileattnError), match=needle):
        tileattn.fg_attention(q, k, v, plan)
