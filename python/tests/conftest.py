import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
try:  # the installed package (pip install ./python), else the source tree
    import tileattn  # noqa: E402
except ImportError:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import tileattn  # noqa: E402


def gpu_ready():
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        if not tileattn.library().tileattn_gpu_kernels_available():
            return False, "libtileattn has no kernels for this GPU (needs Hopper, sm_90)"
    except tileattn.LibraryNotFound as e:
        return False, str(e)
    return True, ""


_ok, _why = gpu_ready()
requires_gpu = pytest.mark.skipif(not _ok, reason=_why)


def reference(q, k, v, mask, text_valid=None, n_video=None):
    """fp32 SDPA with an explicit boolean mask [heads, S, S] (and text validity per batch element)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).float()
    v = v.repeat_interleave(group, 1).float()
    m = mask[None].expand(q.shape[0], -1, -1, -1).clone()
    if text_valid is not None:
        cols = torch.arange(q.shape[2], device=q.device)
        for b, valid in enumerate(text_valid.tolist()):
            m[b, :, :, cols >= n_video + max(0, valid)] = False
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k, v, attn_mask=m)


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()
