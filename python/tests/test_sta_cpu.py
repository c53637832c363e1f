"""The CPU path of tileattn.sta_attention (the C++ reference behind the same torch.library op) against masked SDPA
with StaPlan.dense_mask (test_plan.py checks it against the C++ plan), forward and backward, on fresh random
inputs."""
import zlib

import pytest
import torch

import tileattn
from conftest import reference, rel_l2

CASES = [  # video, tile, windows (one or per head), text_len, q_heads, kv_heads, head_dim, batch
    ((5, 7, 9), (2, 4, 4), [(1, 1, 3)], 0, 2, 2, 64, 1),            # partial tiles, no text
    ((6, 8, 8), (2, 4, 4), [(3, 1, 1), (1, 2, 2)], 13, 2, 1, 128, 2),  # per-head windows, GQA 2:1
    ((4, 5, 6), (2, 2, 2), [(1, 3, 3)], 512, 3, 1, 64, 1),           # text 512 > video, GQA 3:1
    ((3, 9, 10), (3, 4, 4), [(1, 3, 3)], 77, 4, 2, 32, 2),           # full axis t, odd windows
]


def _inputs(case, dtype, seed):
    video, tile, windows, text, hq, hkv, d, b = case
    g = torch.Generator().manual_seed(seed)
    s = video[0] * video[1] * video[2] + text
    q = torch.randn(b, hq, s, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def _expected(case, q, k, v, text_valid):
    video, tile, windows, text, hq, *_ = case
    per_head = windows if len(windows) == hq else windows * hq
    m = tileattn.StaPlan(video, per_head, tile, text).dense_mask("cpu")
    return reference(q.double(), k.double(), v.double(), m, text_valid, video[0] * video[1] * video[2])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-t{c[3]}-h{c[4]}/{c[5]}-d{c[6]}")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_forward_and_backward_match_masked_sdpa(case, dtype, tol):
    video, tile, windows, text, hq, hkv, d, b = case
    q, k, v = _inputs(case, dtype, seed=zlib.crc32(repr((case, dtype)).encode()))
    text_valid = torch.tensor([text, max(0, text - 5)][:b], dtype=torch.int32) if text else None
    out = tileattn.sta_attention(q, k, v, video, windows if len(windows) > 1 else windows[0], tile, text,
                                 text_valid)
    assert out.dtype == dtype and out.shape == q.shape
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _expected(case, qr, kr, vr, text_valid)
    assert rel_l2(out, ref) < tol
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), g)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        assert rel_l2(got, want) < 4 * tol


def test_tile_major_layout_and_lse():
    case = ((4, 8, 8), (2, 4, 4), [(1, 1, 1)], 9, 2, 2, 16, 1)
    video, tile, windows, text, *_ = case
    q, k, v = (t.detach() for t in _inputs(case, torch.float32, seed=3))
    out, lse = tileattn.sta_attention(q, k, v, video, windows[0], tile, text, return_lse=True)
    tm = [tileattn.tile(t, video, tile, text) for t in (q, k, v)]
    out_tm, lse_tm = tileattn.sta_attention(*tm, video, windows[0], tile, text, layout="tile_major", return_lse=True)
    assert torch.allclose(tileattn.untile(out_tm, video, tile, text), out, atol=1e-6)
    assert torch.allclose(tileattn.untile(lse_tm.unsqueeze(-1), video, tile, text).squeeze(-1), lse, atol=1e-5)
    # lse is the natural log of the softmax denominator of the scaled scores
    m = tileattn.StaPlan(video, windows * 2, tile, text).dense_mask("cpu")
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    want = torch.logsumexp(s.masked_fill(~m[None], float("-inf")), dim=-1)
    assert torch.allclose(lse, want, atol=1e-4)


def test_dense_window_none_equals_sdpa():
    q, k, v = (torch.randn(1, 2, 3 * 4 * 4 + 5, 8) for _ in range(3))
    out = tileattn.sta_attention(q, k, v, (3, 4, 4), None, (1, 2, 2), 5)
    assert rel_l2(out, torch.nn.functional.scaled_dot_product_attention(q, k, v)) < 1e-6


def test_bad_inputs_name_the_argument():
    q = torch.randn(1, 2, 2 * 4 * 4, 8)
    with pytest.raises(tileattn.TileattnArgumentError, match="windows"):
        tileattn.sta_attention(q, q, q, (2, 4, 4), [(1, 1, 1)] * 3, (1, 2, 2))  # 3 windows, 2 heads
    with pytest.raises(tileattn.TileattnArgumentError, match=r"windows\[0\]"):
        q3 = torch.randn(1, 2, 3 * 4 * 4, 8)
        tileattn.sta_attention(q3, q3, q3, (3, 4, 4), (2, 1, 1), (1, 2, 2))  # even window, not the full axis
    with pytest.raises(TypeError, match="q on the CPU must be"):
        tileattn.sta_attention(q.to(torch.int32), q, q, (2, 4, 4), (1, 1, 1), (1, 2, 2))
    with pytest.raises(ValueError, match="tokens"):
        tileattn.sta_attention(q, q, q, (2, 4, 5), (1, 1, 1), (1, 2, 2))
    with pytest.raises(ValueError, match="text_valid"):
        tileattn.sta_attention(q, q, q, (2, 4, 4), (1, 1, 1), (1, 2, 2), 0, torch.tensor([1]))


def test_library_and_package_agree_on_the_abi():
    """The ctypes mirrors of the C structs have the library's sizes (checked at load), and one version string."""
    import ctypes
    from tileattn import _ffi
    lib = tileattn.library()
    assert lib.tileattn_version().decode() == tileattn.__version__
    for name, struct in _ffi._STRUCTS.items():
        assert lib.tileattn_struct_size(name.encode()) == ctypes.sizeof(struct), name
    assert lib.tileattn_struct_size(b"no_such_struct") == -1

    class Short(ctypes.Structure):  # a mirror that lost a field must be refused
        _fields_ = _ffi.StaReferenceArgs._fields_[:-2]
    saved = _ffi._STRUCTS["tileattn_sta_reference_args"]
    _ffi._STRUCTS["tileattn_sta_reference_args"] = Short
    try:
        with pytest.raises(tileattn.TileattnError, match="tileattn_sta_reference_args is"):
            _ffi._check_struct_sizes(lib, "libtileattn.so")
    finally:
        _ffi._STRUCTS["tileattn_sta_reference_args"] = saved
