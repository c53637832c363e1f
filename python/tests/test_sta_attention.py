import pytest
import torch

import tileattn
from conftest import reference, rel_l2, requires_gpu

CASES = [
    # video, tile, windows, text, q_heads, kv_heads, head_dim, dtype, batch
    ((12, 16, 24), (6, 8, 8), [(1, 1, 3)], 0, 2, 2, 128, torch.bfloat16, 1),
    ((7, 9, 17), (6, 8, 8), [(1, 1, 1), (2, 2, 3)], 77, 2, 1, 128, torch.bfloat16, 2),
    ((6, 8, 40), (6, 8, 8), [(1, 1, 3)], 1, 2, 2, 64, torch.float16, 1),
    ((12, 24, 24), (6, 8, 8), [(1, 1, 1), (1, 3, 3), (2, 1, 3), (1, 3, 1)], 333, 4, 2, 128, torch.bfloat16, 1),
    ((8, 12, 17), (4, 4, 8), [(1, 3, 1)], 256, 3, 3, 64, torch.bfloat16, 2),
]


@requires_gpu
@pytest.mark.parametrize("video,tile,windows,text,hq,hkv,d,dtype,batch", CASES)
def test_matches_masked_sdpa(video, tile, windows, text, hq, hkv, d, dtype, batch):
    S = video[0] * video[1] * video[2] + text
    q = torch.randn(batch, hq, S, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, hkv, S, d, device="cuda", dtype=dtype) for _ in range(2))
    window = windows[0] if len(windows) == 1 else windows
    out, lse = tileattn.sta_attention(q, k, v, video, window, tile, text, return_lse=True)
    per_head = windows * hq if len(windows) == 1 else windows
    ref = reference(q, k, v, tileattn.StaPlan(video, per_head, tile, text).dense_mask(q.device))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_l2(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


@requires_gpu
def test_bshd_views_and_text_valid():
    video, tile, text, d = (12, 16, 16), (6, 8, 8), 100, 128
    S = video[0] * video[1] * video[2] + text
    # diffusers produces [B, S, H, D] and transposes: strided views must work without copies
    q, k, v = (torch.randn(2, S, 3, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    valid = torch.tensor([10, 100], dtype=torch.int32, device="cuda")
    out = tileattn.sta_attention(q, k, v, video, (1, 1, 1), tile, text, text_valid=valid)
    mask = tileattn.StaPlan(video, [(1, 1, 1)] * 3, tile, text).dense_mask(q.device)
    ref = reference(q, k, v, mask, valid, video[0] * video[1] * video[2])
    assert rel_l2(out, ref) < 1e-2


@requires_gpu
def test_config_and_tile_major_agree_with_natural():
    cfg = tileattn.STAConfig(video_shape=(12, 16, 24), window=(1, 1, 3), text_len=20)
    S = 12 * 16 * 24 + 20
    q, k, v = (torch.randn(1, 2, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    natural = cfg(q, k, v)
    tiled = [tileattn.tile(x, cfg.video_shape, cfg.tile, cfg.text_len) for x in (q, k, v)]
    out_tm = tileattn.sta_attention(*tiled, cfg.video_shape, cfg.window, cfg.tile, cfg.text_len, layout="tile_major")
    assert torch.equal(tileattn.untile(out_tm, cfg.video_shape, cfg.tile, cfg.text_len), natural)


def test_tile_untile_roundtrip_cpu():
    x = torch.randn(2, 3, 7 * 9 * 17 + 5, 4)
    y = tileattn.tile(x, (7, 9, 17), (6, 8, 8), 5)
    assert not torch.equal(x, y)
    assert torch.equal(tileattn.untile(y, (7, 9, 17), (6, 8, 8), 5), x)


@requires_gpu
def test_torch_compile_fullgraph():
    video, S = (12, 16, 24), 12 * 16 * 24
    q, k, v = (torch.randn(1, 2, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    sta = tileattn.sta_attention

    def f(q, k, v):
        return sta(q * 2, k, v, video, (1, 1, 3)) + 1

    compiled = torch.compile(f, fullgraph=True)
    assert torch.equal(compiled(q, k, v), f(q, k, v))


@requires_gpu
def test_cuda_graph_capture_and_replay():
    video, S = (12, 16, 24), 12 * 16 * 24 + 7
    q, k, v = (torch.randn(1, 2, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    f = lambda: tileattn.sta_attention(q, k, v, video, (1, 1, 3), text_len=7)  # noqa: E731
    f()  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = f()
    q.copy_(torch.randn_like(q))  # new inputs, same buffers
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, f())


@requires_gpu
@pytest.mark.parametrize("change,needle", [
    (dict(dtype=torch.float32), "bfloat16 or float16"),
    (dict(window=(3, 1, 1)), "window"),
    (dict(window=[(1, 1, 1)] * 3), "window"),
    (dict(text_len=5), "tokens"),
    (dict(video_shape=(6, 8)), "video_shape"),
    (dict(tile=(6, 6, 8)), "tile"),
    (dict(mixed=True), "one device"),  # CPU tensors alone are the CPU path (test_sta_cpu.py)
    (dict(head_dim=96), "head_dim"),
    (dict(layout="tiled"), "layout"),
])
def test_bad_inputs_name_the_problem(change, needle):
    args = dict(video_shape=(12, 16, 16), tile=(6, 8, 8), window=(1, 1, 1), text_len=0, layout="natural")
    dtype, device, d = change.pop("dtype", torch.bfloat16), change.pop("device", "cuda"), change.pop("head_dim", 128)
    mixed = change.pop("mixed", False)
    args.update(change)
    q, k, v = (torch.randn(1, 2, 12 * 16 * 16, d, device=device, dtype=dtype) for _ in range(3))
    if mixed:
        q = q.cpu()
    with pytest.raises((ValueError, TypeError, tileattn.TileattnError), match=needle):
        tileattn.sta_attention(q, k, v, **args)


def test_mask_strategy_read(tmp_path):
    try:
        tileattn.library()
    except tileattn.LibraryNotFound as e:
        pytest.skip(str(e))
    path = tmp_path / "fv.json"
    path.write_text('{"0_0_0": [3, 3, 3], "2_1_5": [5, 6, 10]}')
    s = tileattn.MaskStrategy.read(path)
    assert s.window_for(2, 1, 5) == (5, 6, 10) and s.window_for(1, 0, 0) is None
    path.write_text('{"0_0": [3, 3, 3]}')
    with pytest.raises(tileattn.TileattnFileError, match="key '0_0'"):
        tileattn.MaskStrategy.read(path)
