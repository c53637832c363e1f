"""ctypes binding of the tileattn C ABI (include/tileattn/tileattn.h). No PyTorch C++ ABI involved, so one build of
libtileattn.so serves every PyTorch 2.x version."""
from __future__ import annotations

import ctypes
import os
import pathlib

ABI_VERSION = 2
STATUS_OK, STATUS_ARGUMENT, STATUS_CUDA, STATUS_INTERNAL, STATUS_FILE = 0, -1, -2, -3, -4
DTYPE_BF16, DTYPE_FP16 = 0, 1
LAYOUT_NATURAL, LAYOUT_TILE_MAJOR = 0, 1
PRECISION_NATIVE, PRECISION_FP8 = 0, 1
MASK_RANDOM, MASK_LOCAL = 0, 1
RULE_TOP_P, RULE_TOP_K, RULE_THRESHOLD, RULE_TARGET_SPARSITY = 0, 1, 2, 3


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("batch_stride", ctypes.c_int64), ("head_stride", ctypes.c_int64),
                ("token_stride", ctypes.c_int64)]


class StaForwardArgs(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_int32), ("dtype", ctypes.c_int32), ("layout", ctypes.c_int32),
        ("precision", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("q_heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("video", ctypes.c_int64 * 3), ("tile", ctypes.c_int64 * 3), ("text_len", ctypes.c_int64),
        ("q", Tensor), ("k", Tensor), ("v", Tensor), ("out", Tensor),
        ("lse", ctypes.c_void_p), ("text_valid", ctypes.c_void_p),
        ("windows", ctypes.POINTER(ctypes.c_int64)), ("num_windows", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_int64),  # precision fp8's scratch
    ]


class StaBackwardArgs(ctypes.Structure):
    _fields_ = [("forward", StaForwardArgs),
                ("grad_out", Tensor), ("grad_q", Tensor), ("grad_k", Tensor), ("grad_v", Tensor),
                ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_int64),
                ("deterministic", ctypes.c_int32), ("reserved", ctypes.c_int32)]


class ColumnPlan(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_int64), ("heads", ctypes.c_int64), ("query_block", ctypes.c_int64),
                ("key_group", ctypes.c_int64), ("capacity", ctypes.c_int64),
                ("table", ctypes.c_void_p), ("counts", ctypes.c_void_p)]


class FgForwardArgs(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_int32), ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("q_heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("q", Tensor), ("k", Tensor), ("v", Tensor), ("out", Tensor),
        ("lse", ctypes.c_void_p), ("scale", ctypes.c_float), ("reserved", ctypes.c_int32),
        ("plan", ColumnPlan),
        ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_int64),
    ]


class DynamicMaskArgs(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_int32), ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("q_heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("q", Tensor), ("k", Tensor),
        ("scale", ctypes.c_float), ("rule", ctypes.c_int32),
        ("p", ctypes.c_double), ("top_k", ctypes.c_int64), ("threshold", ctypes.c_double),
        ("target_sparsity", ctypes.c_double),
        ("keep_diagonal", ctypes.c_int32), ("always_keep_text", ctypes.c_int32), ("text_len", ctypes.c_int64),
        ("window", ctypes.POINTER(ColumnPlan)),
        ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_int64),
    ]


class StaReferenceArgs(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_int32), ("accumulation", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("q_heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("video", ctypes.c_int64 * 3), ("tile", ctypes.c_int64 * 3), ("text_len", ctypes.c_int64),
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
        ("text_valid", ctypes.c_void_p),
        ("windows", ctypes.POINTER(ctypes.c_int64)), ("num_windows", ctypes.c_int64),
        ("scale", ctypes.c_float), ("threads", ctypes.c_int32),
    ]


class TileattnError(RuntimeError):
    """A call into libtileattn failed; the message names the argument or the CUDA problem."""


class LibraryNotFound(TileattnError):
    pass


def _candidates():
    env = os.environ.get("TILEATTN_LIBRARY")
    if env:
        yield pathlib.Path(env)
    here = pathlib.Path(__file__).resolve().parent
    yield here / "_lib" / "libtileattn.so"          # installed by `pip install` (see setup.py)
    for build in ("build", "build-host"):           # a source checkout: python/tileattn -> repo root
        yield here.parent.parent / build / "libtileattn.so"


_lib = None


def library():
    """The loaded libtileattn (searched in $TILEATTN_LIBRARY, the package, then the repo's build/)."""
    global _lib
    if _lib is not None:
        return _lib
    tried = []
    for path in _candidates():
        tried.append(str(path))
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            lib.tileattn_sta_forward.argtypes = [ctypes.POINTER(StaForwardArgs), ctypes.c_void_p]
            lib.tileattn_sta_forward.restype = ctypes.c_int
            lib.tileattn_sta_backward.argtypes = [ctypes.POINTER(StaBackwardArgs), ctypes.c_void_p]
            lib.tileattn_sta_backward.restype = ctypes.c_int
            lib.tileattn_sta_backward_workspace_bytes.argtypes = [ctypes.POINTER(StaForwardArgs),
                                                                  ctypes.POINTER(ctypes.c_int64)]
            lib.tileattn_sta_backward_workspace_bytes.restype = ctypes.c_int
            if hasattr(lib, "tileattn_sta_forward_workspace_bytes"):  # ABI 2 (an older library fails the check below)
                lib.tileattn_sta_forward_workspace_bytes.argtypes = [ctypes.POINTER(StaForwardArgs),
                                                                     ctypes.POINTER(ctypes.c_int64)]
                lib.tileattn_sta_forward_workspace_bytes.restype = ctypes.c_int
            if hasattr(lib, "tileattn_fg_forward"):  # a library built before FG-Attn still serves STA
                lib.tileattn_fg_forward.argtypes = [ctypes.POINTER(FgForwardArgs), ctypes.c_void_p]
                lib.tileattn_fg_forward.restype = ctypes.c_int
                lib.tileattn_fg_forward_workspace_bytes.argtypes = [ctypes.POINTER(FgForwardArgs),
                                                                    ctypes.POINTER(ctypes.c_int64)]
                lib.tileattn_fg_forward_workspace_bytes.restype = ctypes.c_int
                lib.tileattn_build_synthetic_column_plan.argtypes = [
                    ctypes.POINTER(ColumnPlan), ctypes.c_int32, ctypes.c_double, ctypes.c_uint64,
                    ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p]
                lib.tileattn_build_synthetic_column_plan.restype = ctypes.c_int
                lib.tileattn_check_column_plan.argtypes = [ctypes.POINTER(ColumnPlan), ctypes.c_void_p]
                lib.tileattn_check_column_plan.restype = ctypes.c_int
            if hasattr(lib, "tileattn_build_dynamic_column_plan"):
                lib.tileattn_dynamic_mask_workspace_bytes.argtypes = [
                    ctypes.POINTER(DynamicMaskArgs), ctypes.POINTER(ColumnPlan), ctypes.c_int64,
                    ctypes.POINTER(ctypes.c_int64)]
                lib.tileattn_dynamic_mask_workspace_bytes.restype = ctypes.c_int
                lib.tileattn_build_dynamic_column_plan.argtypes = [ctypes.POINTER(DynamicMaskArgs),
                                                                   ctypes.POINTER(ColumnPlan), ctypes.c_void_p]
                lib.tileattn_build_dynamic_column_plan.restype = ctypes.c_int
            if hasattr(lib, "tileattn_sta_reference_forward"):
                lib.tileattn_sta_reference_forward.argtypes = [ctypes.POINTER(StaReferenceArgs), ctypes.c_void_p,
                                                               ctypes.c_void_p]
                lib.tileattn_sta_reference_forward.restype = ctypes.c_int
                lib.tileattn_sta_reference_backward.argtypes = [ctypes.POINTER(StaReferenceArgs)] + \
                    [ctypes.c_void_p] * 4
                lib.tileattn_sta_reference_backward.restype = ctypes.c_int
            lib.tileattn_last_error.restype = ctypes.c_char_p
            lib.tileattn_gpu_kernels_available.restype = ctypes.c_int
            lib.tileattn_abi_version.restype = ctypes.c_int
            lib.tileattn_version.restype = ctypes.c_char_p
            for fn in (lib.tileattn_mask_strategy_read, lib.tileattn_capture_inspect):
                fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
                fn.restype = ctypes.c_int
            if lib.tileattn_abi_version() != ABI_VERSION:
                raise TileattnError(f"{path} speaks ABI {lib.tileattn_abi_version()}, this package {ABI_VERSION}")
            _check_struct_sizes(lib, path)
            _lib = lib
            return lib
    raise LibraryNotFound("libtileattn.so not found; build it (cmake --workflow --preset default) or set "
                          "TILEATTN_LIBRARY. Looked in: " + ", ".join(tried))


_STRUCTS = {"tileattn_tensor": Tensor, "tileattn_sta_forward_args": StaForwardArgs,
            "tileattn_sta_backward_args": StaBackwardArgs, "tileattn_column_plan": ColumnPlan,
            "tileattn_fg_forward_args": FgForwardArgs, "tileattn_dynamic_mask_args": DynamicMaskArgs,
            "tileattn_sta_reference_args": StaReferenceArgs}


def _check_struct_sizes(lib, path) -> None:
    """The ctypes mirrors above against the library's own sizeof (a library without tileattn_struct_size predates
    the check and is trusted by its ABI version)."""
    if not hasattr(lib, "tileattn_struct_size"):
        return
    lib.tileattn_struct_size.argtypes = [ctypes.c_char_p]
    lib.tileattn_struct_size.restype = ctypes.c_int64
    for name, struct in _STRUCTS.items():
        size = lib.tileattn_struct_size(name.encode())
        if size >= 0 and size != ctypes.sizeof(struct):
            raise TileattnError(f"{path}: struct {name} is {size} bytes in the library, {ctypes.sizeof(struct)} in "
                                "tileattn._ffi: the package and the library disagree on the C ABI")


def _library_with(symbol: str, feature: str):
    """The loaded libtileattn, checked to export `symbol` (a library built before `feature` lacks it)."""
    lib = library()
    if not hasattr(lib, symbol):
        raise TileattnError(f"{lib._name} was built before {feature} (no {symbol}); rebuild it")
    return lib


def fg_library():
    """The loaded libtileattn, checked to have the FG-Attn entry points."""
    return _library_with("tileattn_fg_forward", "FG-Attn")


def reference_library():
    """The loaded libtileattn, checked to have the CPU reference path (STA on CPU tensors)."""
    return _library_with("tileattn_sta_reference_forward", "the CPU path")


def dynamic_mask_library():
    """The loaded libtileattn, checked to have the GPU dynamic-mask builder's entry points."""
    fg_library()
    return _library_with("tileattn_build_dynamic_column_plan", "the dynamic mask builder")


class TileattnArgumentError(TileattnError, ValueError):
    """A bad argument; the message names it."""


class TileattnFileError(TileattnError, OSError):
    """A file could not be read or is malformed; the message names the file, the key and the problem."""


def check(status: int) -> None:
    if status == STATUS_OK:
        return
    message = library().tileattn_last_error().decode()
    if status == STATUS_ARGUMENT:
        raise TileattnArgumentError(message)
    if status == STATUS_FILE:
        raise TileattnFileError(message)
    raise TileattnError(message)


def _json_call(fn, path: str) -> str:
    """Calls a C function that writes JSON text into a caller-sized buffer (asks for the size first)."""
    needed = ctypes.c_int64(0)
    status = fn(os.fsencode(path), None, 0, ctypes.byref(needed))
    if status != STATUS_ARGUMENT or needed.value <= 0:  # anything but "buffer too small" is a real error
        check(status)
    buffer = ctypes.create_string_buffer(needed.value)
    check(fn(os.fsencode(path), buffer, needed.value, ctypes.byref(needed)))
    return buffer.value.decode()


def read_mask_strategy_json(path: str) -> str:
    """The strategy file at `path`, validated by the C++ reader and rewritten in tileattn's JSON format."""
    return _json_call(library().tileattn_mask_strategy_read, path)


def inspect_capture_json(path: str) -> str:
    """A capture file (see tileattn.capture) validated by the C++ reader: its metadata, shape, dtypes, and the L2 norm
    of q, k and v as JSON."""
    return _json_call(library().tileattn_capture_inspect, path)
