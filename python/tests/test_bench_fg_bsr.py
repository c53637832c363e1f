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
    dense = plan.to_dense_mask()
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
    want = torch.block_diag(*plan.to_dense_mask())
    assert torch.equal(got, want)
    assert int(indices.max()) < heads * plan.num_key_groups


def test_bsr_keeps_only_the_slots_the_kernel_reads():
    tokens, heads, M, N = 64, 2, 16, 4
    plan = random_plan(tokens, heads, M, N, 0.5, seed=7, malformed=True)
    indptr, indices = plan.to_bsr(fold_heads=False)
    nqb, groups = plan.num_query_blocks, plan.num_key_groups
    dense = plan.to_dense_mask()
    for h in range(heads):
        ip = indptr[h * nqb:(h + 1) * nqb + 1]
        got = bsr_dense(ip - ip[0], indices[int(ip[0]):int(ip[-1])], nqb, groups, M, N, tokens, tokens)
        assert torch.equal(got, dense[h])
    assert int(indptr[1]) == groups  # row 0: every in-range group of its clamped slots, -1 skipped
    assert indices[int(indptr[1]):int(indptr[2])].tolist() == [3]  # row 1: the out-of-range group skipped
