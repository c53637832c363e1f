"""Autograd through tileattn.sta_attention (the STA backward kernels) against PyTorch autograd through the masked
fp32 SDPA reference, on the feature combinations the op exposes; determinism; torch.compile; gradcheck-style checks
of the reference mask itself in float64."""
import pytest
import torch

import tileattn
from conftest import reference, rel_l2, requires_gpu

CASES = [
    # video, tile, windows, text, q_heads, kv_heads, head_dim, dtype, batch, text_valid
    ((12, 16, 24), (6, 8, 8), [(1, 1, 3)], 0, 2, 2, 128, torch.bfloat16, 1, None),
    ((7, 9, 17), (6, 8, 8), [(1, 1, 1), (2, 2, 3)], 77, 2, 1, 128, torch.bfloat16, 2, [5, 77]),
    ((6, 8, 40), (6, 8, 8), [(1, 1, 3)], 0, 2, 2, 64, torch.float16, 1, None),
    ((12, 24, 24), (6, 8, 8), [(1, 1, 1), (1, 3, 3), (2, 1, 3), (1, 3, 1)], 333, 4, 2, 128, torch.bfloat16, 1, None),
    ((8, 12, 17), (4, 4, 8), [(1, 3, 1)], 256, 3, 3, 64, torch.bfloat16, 2, [0, 200]),
    ((30, 16, 40), (6, 8, 8), [(3, 1, 3)], 77, 1, 1, 128, torch.bfloat16, 1, None),  # border tiles
]


def _grads(fn, q, k, v, grad_out):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out, q.grad, k.grad, v.grad


@requires_gpu
@pytest.mark.parametrize("video,tile,windows,text,hq,hkv,d,dtype,batch,valid", CASES)
def test_gradients_match_masked_sdpa_autograd(video, tile, windows, text, hq, hkv, d, dtype, batch, valid):
    n_video = video[0] * video[1] * video[2]
    S = n_video + text
    q = torch.randn(batch, hq, S, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, hkv, S, d, device="cuda", dtype=dtype) for _ in range(2))
    grad_out = torch.randn(batch, hq, S, d, device="cuda", dtype=dtype)
    text_valid = torch.tensor(valid, dtype=torch.int32, device="cuda") if valid is not None else None
    window = windows[0] if len(windows) == 1 else windows
    per_head = windows * hq if len(windows) == 1 else windows
    mask = tileattn.StaPlan(video, per_head, tile, text).dense_mask(q.device)
    _, gq, gk, gv = _grads(lambda q, k, v: tileattn.sta_attention(q, k, v, video, window, tile, text,
                                                                  text_valid=text_valid), q, k, v, grad_out)
    # The reference: fp32 SDPA with the explicit mask, differentiated by PyTorch (repeat_interleave sums GQA groups).
    _, rq, rk, rv = _grads(lambda q, k, v: reference(q.float(), k.float(), v.float(), mask, text_valid, n_video),
                           q.float(), k.float(), v.float(), grad_out.float())
    tol = 2.5e-2 if dtype == torch.bfloat16 else 4e-3
    for name, got, want in (("dq", gq, rq), ("dk", gk, rk), ("dv", gv, rv)):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert torch.isfinite(got).all(), name
        assert rel_l2(got, want) < tol, (name, rel_l2(got, want))
    if text_valid is not None:  # hidden text keys get exactly zero gradient
        for b, n in enumerate(valid):
            assert not gk[b, :, n_video + max(n, 0):].any() and not gv[b, :, n_video + max(n, 0):].any()


@requires_gpu
def test_bshd_views_get_gradients_in_their_own_layout():
    video, text, d = (12, 16, 24), 64, 128
    S = video[0] * video[1] * video[2] + text
    base = [torch.randn(2, S, 3, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in base)
    out = tileattn.sta_attention(q, k, v, video, (1, 1, 3), text_len=text)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    mask = tileattn.StaPlan(video, [(1, 1, 3)] * 3, (6, 8, 8), text).dense_mask(q.device)
    ref_base = [x.detach().float().requires_grad_(True) for x in base]
    ref = reference(*(x.transpose(1, 2) for x in ref_base), mask)
    ref.backward(grad_out.float())
    for got, want in zip(base, ref_base):
        assert rel_l2(got.grad, want.grad) < 2.5e-2


@requires_gpu
def test_deterministic_mode_is_bitwise_reproducible():
    video, text = (12, 16, 24), 77
    S = video[0] * video[1] * video[2] + text
    q, k, v = (torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    grad_out = torch.randn_like(q)
    fn = lambda q, k, v: tileattn.sta_attention(q, k, v, video, (1, 1, 3), text_len=text)  # noqa: E731
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _grads(fn, q, k, v, grad_out)[1:]
        second = _grads(fn, q, k, v, grad_out)[1:]
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    fast = _grads(fn, q, k, v, grad_out)[1:]
    for a, b in zip(first, fast):
        assert rel_l2(a, b) < 1e-2


@requires_gpu
def test_backward_under_torch_compile_and_no_grad_for_lse():
    video, S = (12, 16, 24), 12 * 16 * 24
    q, k, v = (torch.randn(1, 2, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    grad_out = torch.randn_like(q)

    def f(q, k, v):
        return tileattn.sta_attention(q * 2, k, v, video, (1, 1, 3)) + 1

    # Deterministic dQ, so eager and compiled must agree bit for bit (the fast mode's dQ sums in CTA finish order).
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        eager = _grads(f, q, k, v, grad_out)
        compiled = _grads(torch.compile(f, fullgraph=True), q, k, v, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    out, lse = tileattn.sta_attention(q.requires_grad_(True), k, v, video, (1, 1, 3), return_lse=True)
    assert out.requires_grad and not lse.requires_grad


def test_reference_mask_gradcheck_float64():
    """The oracle itself: gradcheck of masked SDPA in float64 with an STA mask (partial tiles, text), on the CPU."""
    video, tile, text = (3, 4, 5), (2, 2, 4), 2
    S = 3 * 4 * 5 + text
    mask = tileattn.StaPlan(video, [(1, 1, 1), (1, 2, 1)], tile, text).dense_mask("cpu")
    q, k, v = (torch.randn(1, 2, S, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=mask), (q, k, v))
