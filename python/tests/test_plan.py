"""The plan protocol (tileattn.plan.AttentionPlan) on both plan kinds: StaPlan against the C++ plan (`tileattn plan
--json`, token by token and its sparsity), FgPlan against its own column table, both as FlexAttention block masks,
sta_attention(plan=...) against the loose arguments on the CPU path, and the errors of plans that do not fit q."""
import json
import os
import pathlib
import random
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

import tileattn
from conftest import rel_l2


def _cli():
    """The C++ CLI: $TILEATTN_CLI, else the `tileattn` executable next to $TILEATTN_LIBRARY or in the repo's builds."""
    if os.environ.get("TILEATTN_CLI"):
        return os.environ["TILEATTN_CLI"]
    repo = pathlib.Path(__file__).resolve().parents[2]
    dirs = [pathlib.Path(os.environ["TILEATTN_LIBRARY"]).parent] if os.environ.get("TILEATTN_LIBRARY") else []
    for d in dirs + [repo / "build", repo / "build-host"]:
        if (d / "tileattn").is_file():
            return str(d / "tileattn")
    return shutil.which("tileattn")


CLI = _cli()
# Eager FlexAttention (the CPU here) applies the block mask's mask_mod; its "not compiled" warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
requires_cli = pytest.mark.skipif(CLI is None, reason="the tileattn CLI is not built (set TILEATTN_CLI)")


def _x(triple):
    return "x".join(map(str, triple))


def cli_plan(video, tile, windows, text, tmp_path):
    """The C++ plan of one window per head: (per-head sets of (query tile, key tile) coordinates, per-head sparsity,
    total sparsity)."""
    path = tmp_path / "plan.json"
    subprocess.run([CLI, "plan", "--shape", _x(video), "--tile", _x(tile), "--window", ",".join(map(_x, windows)),
                    "--heads", str(len(windows)), "--text", str(text), "--json", str(path)],
                   check=True, capture_output=True)
    doc = json.loads(path.read_text())
    pairs = [{(tuple(q["tile"]), tuple(k)) for q in head["query_tiles"] for k in q["keys"]} for head in doc["heads"]]
    return pairs, [head["sparsity"] for head in doc["heads"]], doc["sparsity"]


def mask_from_tile_pairs(video, tile, pairs, text):
    """[heads, S, S] from the C++ plan's visited tile pairs: video query -> video key by its pairs, every text key;
    text queries see everything (the STA plan's text rule)."""
    T, H, W = video
    coords = [(t // tile[0], h // tile[1], w // tile[2]) for t in range(T) for h in range(H) for w in range(W)]
    n_video = len(coords)
    masks = []
    for head_pairs in pairs:
        m = torch.ones(n_video + text, n_video + text, dtype=torch.bool)
        m[:n_video, :n_video] = torch.tensor([[(qc, kc) in head_pairs for kc in coords] for qc in coords])
        masks.append(m)
    return torch.stack(masks)


CASES = [  # video, tile, per-head windows, text
    ((5, 7, 9), (2, 4, 4), [(1, 1, 3)], 0),                 # partial tiles on every axis, no text
    ((5, 7, 9), (2, 4, 4), [(1, 1, 3), (3, 1, 1)], 13),     # per-head windows, text
    ((6, 8, 12), (2, 4, 4), [(3, 2, 1), (1, 1, 3), (3, 2, 3)], 7),  # odd windows, an even full axis (h: grid 2)
    ((3, 9, 10), (3, 4, 4), [(1, 3, 3)], 40),               # the whole grid: dense video part, text > 0
    ((7, 5, 6), (3, 2, 4), [(3, 1, 1), (1, 3, 1)], 5),      # windows sliding inward at both borders
]


@requires_cli
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{_x(c[0])}-t{c[3]}-h{len(c[2])}")
def test_sta_plan_matches_the_cpp_plan(case, tmp_path):
    video, tile, windows, text = case
    pairs, head_sparsity, total = cli_plan(video, tile, windows, text, tmp_path)
    plan = tileattn.StaPlan(video, windows if len(windows) > 1 else windows[0], tile, text)
    mask = plan.dense_mask()
    assert mask.shape == (len(windows), plan.tokens, plan.tokens)
    assert torch.equal(mask, mask_from_tile_pairs(video, tile, pairs, text))
    assert plan.sparsity() == pytest.approx(total, abs=1e-12)
    for h, w in enumerate(windows):
        assert tileattn.StaPlan(video, w, tile, text).sparsity() == pytest.approx(head_sparsity[h], abs=1e-12)
    visited = mask.sum().item()
    assert plan.sparsity() == pytest.approx(1 - visited / mask.numel(), abs=1e-12)


@requires_cli
def test_sta_plan_accepts_the_windows_the_library_accepts(tmp_path):
    video, tile = (10, 8, 12), (2, 4, 4)  # grid (5, 2, 3)
    for window in [(1, 1, 1), (2, 1, 1), (3, 2, 3), (5, 1, 1), (4, 2, 3), (1, 3, 1), (7, 1, 1), (1, 1, 2)]:
        accepted = subprocess.run([CLI, "plan", "--shape", _x(video), "--tile", _x(tile), "--window", _x(window)],
                                  capture_output=True).returncode == 0
        try:
            tileattn.StaPlan(video, window, tile)
            made = True
        except tileattn.TileattnArgumentError as e:
            assert "windows[0]" in str(e)
            made = False
        assert made == accepted, window


def test_sta_plan_window_table_follows_the_0_1_heads_rule():
    video, tile = (4, 8, 8), (2, 4, 4)
    dense = tileattn.StaPlan(video, None, tile, 3)
    assert dense.windows == () and dense.heads is None and dense.sparsity() == 0.0 and dense.dense_mask().all()
    shared = tileattn.StaPlan(video, (1, 1, 1), tile, 3)
    assert shared.heads is None and shared.dense_mask().shape[0] == 1
    per_head = tileattn.StaPlan(video, [(1, 1, 1), (1, 1, 1), (1, 1, 1)], tile, 3)
    assert per_head.heads == 3 and torch.equal(per_head.dense_mask(), shared.dense_mask().expand(3, -1, -1))
    assert per_head.sparsity() == pytest.approx(shared.sparsity(), abs=1e-15) and shared.sparsity() > 0.5
    for plan in (dense, shared, tileattn.FgPlan.from_rows([[0]], 4, 1, 16, 4, device="cpu")):
        assert isinstance(plan, tileattn.AttentionPlan)


def _tile_major_blocks(plan, block):
    """bool [heads, blocks, blocks]: the blocks of block x block tile-major tokens that hold a visited pair."""
    order = tileattn.untile(torch.arange(plan.tokens)[:, None], plan.video_shape, plan.tile, plan.text_len)[:, 0]
    order = torch.argsort(order)  # tile-major position -> natural index
    m = plan.dense_mask()[:, order][:, :, order]
    n = -(-plan.tokens // block)
    padded = torch.zeros(m.shape[0], n * block, n * block, dtype=torch.bool)
    padded[:, :plan.tokens, :plan.tokens] = m
    return padded.view(m.shape[0], n, block, n, block).any(4).any(2)


@pytest.mark.parametrize("video,tile,window,text,block,full_only", [
    ((6, 8, 8), (2, 4, 4), [(1, 1, 1), (3, 1, 1)], 13, 32, True),   # whole tiles of 32 tokens: FULL blocks only
    ((4, 8, 8), (2, 8, 8), (1, 1, 1), 40, 128, True),              # one 128-token block per tile, partial text block
    ((5, 7, 9), (2, 4, 4), (1, 1, 3), 6, 16, False),                # partial tiles: create_block_mask
])
def test_sta_block_mask_is_the_dense_mask(video, tile, window, text, block, full_only):
    from torch.nn.attention.flex_attention import flex_attention
    plan = tileattn.StaPlan(video, window, tile, text)
    bm = plan.block_mask(block_size=block)
    heads = plan.heads or 1
    assert torch.equal(bm.to_dense()[0].bool(), _tile_major_blocks(plan, block))
    if full_only:
        assert not bm.kv_num_blocks.any()  # every visited block FULL: compiled FlexAttention calls no mask_mod
    q, k, v = (torch.randn(1, 2, plan.tokens, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    tiled = [tileattn.tile(x, video, tile, text) for x in (q, k, v)]
    out = tileattn.untile(flex_attention(*tiled, block_mask=bm), video, tile, text)
    assert rel_l2(out, F.scaled_dot_product_attention(q, k, v, attn_mask=plan.dense_mask())) < 1e-6
    assert heads == bm.kv_num_blocks.shape[1]


def _random_fg_rows(heads, tokens, query_block, key_group, seed):
    rng = random.Random(seed)
    groups = -(-tokens // key_group)
    return [sorted(rng.sample(range(groups), rng.randint(0, groups)))
            for _ in range(heads * -(-tokens // query_block))]


@pytest.mark.parametrize("tokens,heads,query_block,key_group", [(100, 2, 16, 16), (77, 3, 32, 5), (64, 1, 16, 64)])
def test_fg_plan_masks_and_sparsity_follow_its_column_table(tokens, heads, query_block, key_group):
    rows = _random_fg_rows(heads, tokens, query_block, key_group, seed=tokens)
    plan = tileattn.FgPlan.from_rows(rows, tokens, heads, query_block, key_group, device="cpu")
    nqb = -(-tokens // query_block)
    want = torch.tensor([[[j // key_group in rows[h * nqb + i // query_block] for j in range(tokens)]
                          for i in range(tokens)] for h in range(heads)])
    assert torch.equal(plan.dense_mask(), want)
    assert plan.sparsity() == pytest.approx(1 - want.sum().item() / want.numel(), abs=1e-12)
    assert torch.equal(plan.block_mask().to_dense()[0].bool(), plan.group_mask())
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v = (torch.randn(1, heads, tokens, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    seen = want.any(-1)  # queries that see no key: SDPA gives NaN, FlexAttention 0
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=want).nan_to_num(0.0)
    out = flex_attention(q, k, v, block_mask=plan.block_mask())
    assert rel_l2(out * seen[None, :, :, None], ref) < 1e-6


def test_fg_plan_to_and_check_matches():
    plan = tileattn.FgPlan.from_rows(_random_fg_rows(2, 40, 16, 8, 1), 40, 2, 16, 8, device="cpu")
    moved = plan.to("cpu")
    assert moved is not plan and torch.equal(moved.table, plan.table) and torch.equal(moved.counts, plan.counts)
    plan.check_matches(torch.empty(1, 2, 40, 8))
    with pytest.raises(ValueError, match="plan is for 40 tokens and 2 heads, q has 40 tokens and 3 heads"):
        plan.check_matches(torch.empty(1, 3, 40, 8))
    with pytest.raises(ValueError, match="plan is for 40 tokens"):
        plan.check_matches(torch.empty(1, 2, 41, 8))
    with pytest.raises(ValueError, match="plan must be on q's device meta"):
        plan.check_matches(torch.empty(1, 2, 40, 8, device="meta"))


STA_CALLS = [  # video, tile, window, text, heads, layout
    ((5, 7, 9), (2, 4, 4), (1, 1, 3), 0, 2, "natural"),
    ((6, 8, 8), (2, 4, 4), [(3, 1, 1), (1, 2, 2)], 13, 2, "natural"),
    ((4, 8, 8), (2, 4, 4), [(1, 1, 1), (1, 2, 1)], 9, 2, "tile_major"),
    ((3, 4, 4), (1, 2, 2), None, 5, 1, "natural"),
]


@pytest.mark.parametrize("video,tile,window,text,heads,layout", STA_CALLS)
def test_sta_attention_with_a_plan_equals_the_loose_arguments(video, tile, window, text, heads, layout):
    plan = tileattn.StaPlan(video, window, tile, text)
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, heads, plan.tokens, 16, generator=g) for _ in range(3))
    loose, loose_lse = tileattn.sta_attention(q, k, v, video, window, tile, text, layout=layout, return_lse=True)
    planned, planned_lse = tileattn.sta_attention(q, k, v, plan=plan, layout=layout, return_lse=True)
    assert torch.equal(planned, loose) and torch.equal(planned_lse, loose_lse)
    if layout == "natural":  # and both are the plan's masked attention
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.dense_mask())
        assert rel_l2(planned, ref) < 1e-5


def test_a_shared_window_equals_the_same_window_per_head():
    video, tile, text = (6, 8, 8), (2, 4, 4), 3
    q, k, v = (torch.randn(1, 3, 6 * 8 * 8 + text, 16) for _ in range(3))
    shared = tileattn.sta_attention(q, k, v, plan=tileattn.StaPlan(video, (3, 1, 1), tile, text))
    per_head = tileattn.sta_attention(q, k, v, plan=tileattn.StaPlan(video, [(3, 1, 1)] * 3, tile, text))
    assert torch.equal(shared, per_head)
    assert rel_l2(shared, F.scaled_dot_product_attention(q, k, v)) > 0.05  # the window does restrict attention


def test_bad_plans_name_the_argument():
    video, tile = (4, 8, 8), (2, 4, 4)
    q = torch.randn(1, 2, 4 * 8 * 8, 8)
    with pytest.raises(tileattn.TileattnArgumentError, match="plan: 3 per-head windows for q's 2 heads"):
        tileattn.sta_attention(q, q, q, plan=tileattn.StaPlan(video, [(1, 1, 1)] * 3, tile))
    with pytest.raises(tileattn.TileattnArgumentError, match=r"plan: q has 256 tokens but .* text_len 4 = 260"):
        tileattn.sta_attention(q, q, q, plan=tileattn.StaPlan(video, (1, 1, 1), tile, 4))
    with pytest.raises(tileattn.TileattnArgumentError, match=r"windows\[1\]: window \(2, 1, 1\) along t"):
        tileattn.StaPlan((6, 8, 8), [(1, 1, 1), (2, 1, 1)], tile)  # grid (3, 2, 2): even and not the whole axis
    tileattn.StaPlan(video, [(1, 1, 1), (2, 1, 1)], tile)  # grid (2, 2, 2): 2 is the whole t axis
    with pytest.raises(tileattn.TileattnArgumentError, match=r"windows\[0\]: window \(1, 3, 1\) along h"):
        tileattn.StaPlan(video, (1, 3, 1), tile)  # wider than the grid
    with pytest.raises(TypeError, match="plan must be a tileattn.StaPlan, got FgPlan"):
        tileattn.sta_attention(q, q, q, plan=tileattn.FgPlan.from_rows([[0]] * 32, 256, 2, 16, 8, device="cpu"))
    with pytest.raises(TypeError, match="not both"):
        tileattn.sta_attention(q, q, q, video, plan=tileattn.StaPlan(video, (1, 1, 1), tile))
    with pytest.raises(TypeError, match="not both"):
        tileattn.sta_attention(q, q, q, window=(1, 1, 1), plan=tileattn.StaPlan(video, (1, 1, 1), tile))
    with pytest.raises(TypeError, match="needs video_shape"):
        tileattn.sta_attention(q, q, q)
    with pytest.raises(ValueError, match="text_len must be an int >= 0"):
        tileattn.StaPlan(video, (1, 1, 1), tile, -1)
