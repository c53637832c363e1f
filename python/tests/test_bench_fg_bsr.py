"""FgPlan.to_bsr, the FG plan -> FlashInfer BSR conversion bench/bench_fg.py uses: expanded back to a dense mask it
must equal the plan's own dense form (CPU, pure torch; no library, no GPU, no FlashInfer)."""
import torch

import tileattn


def bsr_dense(indptr, indices, rows, cols, R, C, M, N):
    """bool [M, N]: the element mask of a BSR matrix of R x C blocks (block rows `rows`, block columns `cols`)."""
    blocks = torch.zeros(rows, cols, dtype=torch.bool)
    lengths = (indptr[1:] - indptr[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(rows), lengths)
    blocks[row_of, indices.long()] = True
    return blocks.repeat_interleave(R, 0).repeat_interleave(C, 1)[:M, :N]


def random_plan(tokens, heads, M, N, density, seed, malformed=False):
    g = torch.Generator().manual_seed(seed)
    nqb, groups = -(-tokens // M), -(-tokens // N)
    keep = torch.rand(heads * nqb, groups, generator=g) < density
    rows = [torch.nonzero(r).flatten().tolist() for r in keep]
    plan = tileattn.FgPlan.from_rows(rows, tokens, heads, M, N, device="cpu", capacity=groups + 2)
    if malformed:  # slots the kernel skips: a count past capacity, groups out of range
        plan.counts[0] = plan.capacity + 5
        plan.table[0, :] = torch.arange(plan.capacity, dtype=torch.int32) - 1
        plan.counts[1] = 2
        plan.table[1, :2] = torch.tensor([groups, 3], dtype=torch.int32)
    return plan


def test_bsr_expands_to_the_plan_partial_last_group_and_block():
    tokens, heads, M, N = 100, 3, 16, 6  # 7 query blocks (last of 4 rows), 17 key groups (last of 4 keys)
    plan = random_plan(tokens, heads, M, N, 0.4, seed=3)
    dense = plan.dense_mask()
    nqb, groups = plan.num_query_blocks, plan.num_key_groups
    assert tokens % M and tokens % N  # the partial edges are exercised
    indptr, indices = plan.to_bsr(fold_heads=False)
    assert indptr.dtype == torch.int32 and indices.dtype == torch.int32
    assert indptr.shape == (plan.num_rows + 1,) and int(indptr[-1]) == indices.numel() == int(plan.counts.sum())
    for h in range(heads):
        ip = indptr[h * nqb:(h + 1) * nqb + 1]
        ind = indices[int(ip[0]):int(ip[-1])]
        got = bsr_dense(ip - ip[0], ind, nqb, groups, M, N, tokens, tokens)
        assert torch.equal(got, dense[h]), f"head {h}"
    # rows ascending, as the plan lists them
    for r in range(plan.num_rows):
        row = indices[int(indptr[r]):int(indptr[r + 1])]
        assert bool((row[1:] > row[:-1]).all())


def test_bsr_folded_heads_is_block_diagonal():
    tokens, heads, M, N = 96, 4, 16, 8  # divisible: heads folded into the sequence of heads * tokens
    plan = random_plan(tokens, heads, M, N, 0.3, seed=5)
    indptr, indices = plan.to_bsr(fold_heads=True)
    S = heads * tokens
    got = bsr_dense(indptr, indices, plan.num_rows, heads * plan.num_key_groups, M, N, S, S)
    want = torch.block_diag(*plan.dense_mask())
    assert torch.equal(got, want)
    assert int(indices.max()) < heads * plan.num_key_groups


def test_bsr_keeps_only_the_slots_the_kernel_reads():
    tokens, heads, M, N = 64, 2, 16, 4
    plan = random_plan(tokens, heads, M, N, 0.5, seed=7, malformed=True)
    indptr, indices = plan.to_bsr(fold_heads=False)
    nqb, groups = plan.num_query_blocks, plan.num_key_groups
    dense = plan.dense_mask()
    for h in range(heads):
        ip = indptr[h * nqb:(h + 1) * nqb + 1]
        got = bsr_dense(ip - ip[0], indices[int(ip[0]):int(ip[-1])], nqb, groups, M, N, tokens, tokens)
        assert torch.equal(got, dense[h])
    assert int(indptr[1]) == groups  # row 0: every in-range group of its clamped slots, -1 skipped
    assert indices[int(indptr[1]):int(indptr[2])].tolist() == [3]  # row 1: the out-of-range group skipped


# ---- bench/bench_fg.py's harness end to end on the CPU: emulated FG / FlashInfer kernels, no CUDA

import importlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def masked_attention(q, k, v, mask):
    """q/k/v [B, H, S, D], mask bool [H, S, S] -> fp32 SDPA cast back."""
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[None])
    return out.to(q.dtype)


class FakeBsrWrapper:
    """FlashInfer's BlockSparseAttentionWrapper as documented: BSR (indptr, indices) of R x C blocks over M x N,
    one pattern for every head, q [M, Hq, D], k/v [N, Hkv, D]."""
    corrupt = False

    def __init__(self, workspace, backend="auto"):
        self._backend = backend

    def plan(self, indptr, indices, M, N, R, C, num_qo_heads, num_kv_heads, head_dim, **kw):
        assert indptr.dtype == indices.dtype == torch.int32 and N % C == 0
        assert int(indices.max()) < N // C
        self.mask = bsr_dense(indptr, indices, -(-M // R), N // C, R, C, M, N)

    def run(self, q, k, v, out=None):
        o = masked_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                             self.mask.expand(q.shape[1], -1, -1))[0].transpose(0, 1)
        if self.corrupt:
            o = o.flip(0)
        out.copy_(o)
        return out


def fake_synthetic_plan(tokens, heads, M, N, sparsity, kind="random", video=None, seed=0, capacity=None, out=None,
                        **kw):
    if out is not None:
        return out
    g = torch.Generator().manual_seed(seed)
    nqb, groups = -(-tokens // M), -(-tokens // N)
    keep = torch.rand(heads * nqb, groups, generator=g) >= sparsity
    qb = torch.arange(heads * nqb) % nqb
    col = torch.arange(groups)
    keep |= (col[None] * N < (qb[:, None] + 1) * M) & ((col[None] + 1) * N > qb[:, None] * M)  # the diagonal
    rows = [torch.nonzero(r).flatten().tolist() for r in keep]
    return tileattn.FgPlan.from_rows(rows, tokens, heads, M, N, device="cpu",
                                     capacity=groups if capacity is None else capacity)


@pytest.fixture
def bench_fg(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("bench_fg")
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    monkeypatch.setattr(mod, "ceilings", lambda: (1.0, 1.0))
    monkeypatch.setattr(mod, "gpu_state", lambda: (None, None))

    def timed(fn, warmup, reps, inner=3):
        fn()
        return 1.0, [1.0]
    monkeypatch.setattr(mod, "timed", timed)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200 (emulated)")
    monkeypatch.setattr(tileattn, "synthetic_fg_plan", fake_synthetic_plan)
    monkeypatch.setattr(tileattn, "fg_attention", lambda q, k, v, plan: masked_attention(q, k, v,
                                                                                        plan.dense_mask()))
    fake = types.ModuleType("flashinfer")
    fake.__version__ = "0-fake"
    fake.BlockSparseAttentionWrapper = FakeBsrWrapper
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    monkeypatch.setattr(FakeBsrWrapper, "corrupt", False)
    return mod


def run_bench(mod, monkeypatch, tmp_path, *args):
    path = tmp_path / "fg.json"
    monkeypatch.setattr(sys, "argv", ["bench_fg.py", "--tiny", "--no-flex", "--no-sta", "--reps", "1", "--warmup",
                                      "0", "--json", str(path), *args])
    code = 0
    try:
        mod.main()
    except SystemExit as e:
        code = e.code
    return code, json.loads(path.read_text())


def test_config_order_puts_the_headline_first(bench_fg):
    order = bench_fg.config_order(["random", "local"], [64, 8, 16, 1], [0.5, 0.7, 0.9])
    assert order[:4] == [("random", 1, 0.7), ("local", 1, 0.7), ("random", 16, 0.7), ("local", 16, 0.7)]
    assert len(order) == 24 and len(set(order)) == 24


def test_harness_flashinfer_matches_fg_with_folded_heads(bench_fg, monkeypatch, tmp_path):
    code, res = run_bench(bench_fg, monkeypatch, tmp_path, "--sparsities", "0.7", "--key-groups", "1,16,64")
    assert code == 0, res.get("failures")
    assert "flashinfer_import_error" not in res and res["flashinfer_version"] == "0-fake"
    for n in (1, 16, 64):
        for kind in ("random", "local"):
            label = f"{kind}_n{n}_s0.70"
            assert res[f"flashinfer_fg_{label}_rel_l2_vs_tileattn"] < 1e-2, label
            for key in ("flashinfer_fg_{}_fwd_ms", "tileattn_fg_{}_fwd_ms", "flashinfer_fg_{}_plan_ms",
                        "tileattn_fg_{}_speedup_vs_flashinfer", "fg_mask_build_{}_ms"):
                assert key.format(label) in res, key.format(label)
    assert res["configs_done"][:2] == ["random_n1_s0.70", "local_n1_s0.70"]


def test_harness_records_a_mismatch_and_fails(bench_fg, monkeypatch, tmp_path):
    monkeypatch.setattr(FakeBsrWrapper, "corrupt", True)
    code, res = run_bench(bench_fg, monkeypatch, tmp_path, "--sparsities", "0.7", "--key-groups", "16",
                          "--kinds", "random")
    assert code == 3
    assert "MISMATCH" in res["flashinfer_fg_random_n16_s0.70_error"]
    assert "flashinfer_fg_random_n16_s0.70_fwd_ms" not in res and "tileattn_fg_random_n16_s0.70_fwd_ms" in res


def test_harness_survives_a_failing_peer(bench_fg, monkeypatch, tmp_path):
    def boom(self, *a, **kw):
        raise RuntimeError("emulated FlashInfer failure")
    monkeypatch.setattr(FakeBsrWrapper, "plan", boom)
    code, res = run_bench(bench_fg, monkeypatch, tmp_path, "--sparsities", "0.5,0.7", "--key-groups", "8",
                          "--kinds", "local")
    assert code == 0
    assert "emulated FlashInfer failure" in res["flashinfer_fg_local_n8_s0.70_error"]
    assert res["configs_done"] == ["local_n8_s0.70", "local_n8_s0.50"]


def test_harness_without_flashinfer(bench_fg, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import raises ImportError
    code, res = run_bench(bench_fg, monkeypatch, tmp_path, "--sparsities", "0.9", "--key-groups", "16",
                          "--kinds", "random")
    assert code == 0 and "flashinfer_import_error" in res
    assert "tileattn_fg_random_n16_s0.90_fwd_ms" in res
