/* tileattn C ABI: callable from C, Python (ctypes/cffi), Rust... without linking C++ or PyTorch.
 * Every function returns 0 on success or a negative tileattn_status; tileattn_last_error() then describes the
 * failure (thread-local, valid until the next call on the same thread). */
#ifndef TILEATTN_TILEATTN_H
#define TILEATTN_TILEATTN_H
#include <stdint.h>

#include "tileattn/export.hpp"

#ifdef __cplusplus
extern "C" {
#endif

#define TILEATTN_ABI_VERSION 2 /* 2: tileattn_sta_forward_args gained precision and the fp8 workspace */

typedef enum tileattn_status {
  TILEATTN_OK = 0,
  TILEATTN_ERROR_ARGUMENT = -1,  /* a bad argument; the message names it */
  TILEATTN_ERROR_CUDA = -2,      /* a CUDA failure, or no suitable GPU / kernels in this build */
  TILEATTN_ERROR_INTERNAL = -3,
  TILEATTN_ERROR_FILE = -4       /* a file could not be read or is malformed; the message names file, key, problem */
} tileattn_status;

typedef enum tileattn_dtype { TILEATTN_BF16 = 0, TILEATTN_FP16 = 1 } tileattn_dtype;
typedef enum tileattn_layout { TILEATTN_NATURAL = 0, TILEATTN_TILE_MAJOR = 1 } tileattn_layout;
/* What the tensor cores multiply: the inputs' dtype, or e4m3 copies quantized by a pre-pass (docs/DESIGN.md "FP8 STA
 * forward"); the output keeps the inputs' dtype. Forward only: the backward refuses TILEATTN_FP8. */
typedef enum tileattn_precision { TILEATTN_NATIVE = 0, TILEATTN_FP8 = 1 } tileattn_precision;

/* A [batch, heads, tokens, head_dim] device tensor; strides in elements, head_dim contiguous. */
typedef struct tileattn_tensor {
  void* data;
  int64_t batch_stride;
  int64_t head_stride;
  int64_t token_stride;
} tileattn_tensor;

typedef struct tileattn_sta_forward_args {
  int32_t abi_version; /* TILEATTN_ABI_VERSION */
  int32_t dtype;       /* tileattn_dtype */
  int32_t layout;      /* tileattn_layout */
  int32_t precision;   /* tileattn_precision: 0 native, 1 fp8 */
  int64_t batch, q_heads, kv_heads, head_dim;
  int64_t video[3]; /* T, H, W */
  int64_t tile[3];  /* tt, th, tw */
  int64_t text_len;
  tileattn_tensor q, k, v, out;
  float* lse;                 /* optional [batch, q_heads, tokens] fp32 */
  const int32_t* text_valid;  /* optional device [batch] */
  const int64_t* windows;     /* host array of num_windows (wt, wh, ww) triples; NULL/0 = dense */
  int64_t num_windows;        /* 0, 1 or q_heads */
  float scale;                /* 0: 1/sqrt(head_dim) */
  void* workspace;            /* precision fp8: device scratch, 256-byte aligned, tileattn_sta_forward_workspace_bytes
                               * bytes (overwritten); unused (may be NULL) for native precision */
  int64_t workspace_bytes;
} tileattn_sta_forward_args;

/* Bytes of `workspace` the forward needs: 0 for native precision. Validates the arguments like tileattn_sta_forward. */
TILEATTN_EXPORT int tileattn_sta_forward_workspace_bytes(const tileattn_sta_forward_args* args, int64_t* bytes);
TILEATTN_EXPORT int tileattn_sta_forward(const tileattn_sta_forward_args* args, void* cuda_stream);

/* STA backward: dQ, dK, dV of the forward call described by `forward` (its `out` is the forward output, its `lse`
 * the forward LSE, required; forward.precision must be TILEATTN_NATIVE: the backward differentiates the native
 * forward). See tileattn::sta_backward in sta.hpp. */
typedef struct tileattn_sta_backward_args {
  tileattn_sta_forward_args forward;
  tileattn_tensor grad_out, grad_q, grad_k, grad_v;
  void* workspace;         /* device, 256-byte aligned, tileattn_sta_backward_workspace_bytes bytes */
  int64_t workspace_bytes;
  int32_t deterministic;   /* 1: bitwise reproducible dQ (slower) */
  int32_t reserved;
} tileattn_sta_backward_args;

TILEATTN_EXPORT int tileattn_sta_backward_workspace_bytes(const tileattn_sta_forward_args* forward, int64_t* bytes);
TILEATTN_EXPORT int tileattn_sta_backward(const tileattn_sta_backward_args* args, void* cuda_stream);

/* ---- FG-Attn: fine-grained sparse attention forward (see tileattn/fg.hpp) ---- */

/* A fixed-capacity column plan in device memory: query blocks of query_block (M) positions, key groups of key_group
 * (N) positions. Row r = head * ceil(tokens / query_block) + query block lists counts[r] strictly ascending key groups
 * in table[r * capacity, r * capacity + counts[r]). */
typedef struct tileattn_column_plan {
  int64_t tokens, heads, query_block, key_group;
  int64_t capacity;
  int32_t* table;  /* device [rows, capacity] */
  int32_t* counts; /* device [rows] */
} tileattn_column_plan;

typedef struct tileattn_fg_forward_args {
  int32_t abi_version; /* TILEATTN_ABI_VERSION */
  int32_t dtype;       /* tileattn_dtype */
  int64_t batch, q_heads, kv_heads, head_dim;
  tileattn_tensor q, k, v, out;
  float* lse;          /* optional [batch, q_heads, tokens] fp32 */
  float scale;         /* 0: 1/sqrt(head_dim) */
  int32_t reserved;
  tileattn_column_plan plan; /* plan.tokens = tokens, plan.heads = q_heads; one plan for every batch element */
  void* workspace;           /* query_block < 128: device, 256-byte aligned, tileattn_fg_forward_workspace_bytes */
  int64_t workspace_bytes;
} tileattn_fg_forward_args;

TILEATTN_EXPORT int tileattn_fg_forward_workspace_bytes(const tileattn_fg_forward_args* args, int64_t* bytes);
TILEATTN_EXPORT int tileattn_fg_forward(const tileattn_fg_forward_args* args, void* cuda_stream);

typedef enum tileattn_synthetic_mask { TILEATTN_MASK_RANDOM = 0, TILEATTN_MASK_LOCAL = 1 } tileattn_synthetic_mask;
/* Writes a synthetic mask into the device plan on the stream (see build_synthetic_column_plan in fg.hpp). video
 * (T, H, W) and text_len matter for TILEATTN_MASK_LOCAL only; video may be NULL for TILEATTN_MASK_RANDOM. */
TILEATTN_EXPORT int tileattn_build_synthetic_column_plan(const tileattn_column_plan* plan, int32_t kind, double sparsity,
                                         uint64_t seed, const int64_t video[3], int64_t text_len,
                                         int32_t keep_diagonal, void* cuda_stream);
/* Copies the plan to the host and validates it (the message names "counts" or "table"); synchronizes the stream. */
TILEATTN_EXPORT int tileattn_check_column_plan(const tileattn_column_plan* plan, void* cuda_stream);

/* ---- FG-Attn: dynamic fine-grained masks built on the GPU (see tileattn/dynamic_mask_gpu.hpp) ---- */

typedef enum tileattn_selection_rule {
  TILEATTN_RULE_TOP_P = 0,           /* per row: fewest groups by descending mass reaching p of the eligible mass */
  TILEATTN_RULE_TOP_K = 1,           /* per row: the top_k groups of highest mass, plus the always-kept groups */
  TILEATTN_RULE_THRESHOLD = 2,       /* per row: every group with mass >= threshold, plus the always-kept groups */
  TILEATTN_RULE_TARGET_SPARSITY = 3  /* per head: one threshold on mass per key reaching target_sparsity */
} tileattn_selection_rule;

typedef struct tileattn_dynamic_mask_args {
  int32_t abi_version; /* TILEATTN_ABI_VERSION */
  int32_t dtype;       /* tileattn_dtype */
  int64_t batch, q_heads, kv_heads, head_dim; /* head_dim 64 or 128; kv_heads divides q_heads */
  tileattn_tensor q, k; /* [batch, heads, tokens, head_dim], in the plan's token order; k 16-byte aligned rows */
  float scale;          /* 0: 1/sqrt(head_dim) */
  int32_t rule;         /* tileattn_selection_rule */
  double p;             /* TOP_P, in (0, 1] */
  int64_t top_k;        /* TOP_K, >= 0 (ColumnSelection::k) */
  double threshold;     /* THRESHOLD, >= 0 */
  double target_sparsity; /* TARGET_SPARSITY, in [0, 1) */
  int32_t keep_diagonal;    /* 1: always keep the groups overlapping the query block's own positions */
  int32_t always_keep_text; /* 1: always keep the groups holding text keys (the last text_len positions) */
  int64_t text_len;
  const tileattn_column_plan* window; /* optional (NULL: all groups eligible): a device plan of the output's shape */
  void* workspace;                    /* device, 256-byte aligned, tileattn_dynamic_mask_workspace_bytes bytes */
  int64_t workspace_bytes;
} tileattn_dynamic_mask_args;

/* Workspace bytes for building a plan of out_shape_plan's shape (only its tokens, heads, query_block, key_group are
 * read) with heads_per_pass query heads' masses resident at once (0: all heads, the fastest; 1: the least). */
TILEATTN_EXPORT int tileattn_dynamic_mask_workspace_bytes(const tileattn_dynamic_mask_args* args,
                                          const tileattn_column_plan* out_shape_plan, int64_t heads_per_pass,
                                          int64_t* bytes);
/* Estimates the attention mass per (head, query block, key group) from q and k and writes the rule's selection into
 * out (every row, every slot; unused slots -1; a row longer than out->capacity keeps its capacity groups of highest
 * priority). On the stream, no host synchronization, no allocation (CUDA-graph capturable). */
TILEATTN_EXPORT int tileattn_build_dynamic_column_plan(const tileattn_dynamic_mask_args* args, const tileattn_column_plan* out,
                                       void* cuda_stream);

/* Reads a mask-strategy file (FastVideo's format or tileattn's), validates it, and writes it in tileattn's JSON format
 * (NUL-terminated) into buffer. *needed receives the size the text needs (NUL included); if capacity is smaller the
 * call returns TILEATTN_ERROR_ARGUMENT naming "capacity" and writes nothing: call again with a larger buffer. */
TILEATTN_EXPORT int tileattn_mask_strategy_read(const char* path, char* buffer, int64_t capacity, int64_t* needed);
/* Reads and validates a capture file (safetensors with q, k, v and calibration metadata, see capture.hpp) and writes
 * a JSON summary into buffer, sized as for tileattn_mask_strategy_read: {"video_shape", "text_len", "step", "layer",
 * "prompt", "metadata", "shape": [B, heads, S, D], "dtypes": {"q": "BF16", ...}, "l2_norms": {"q": ..., ...}}. */
TILEATTN_EXPORT int tileattn_capture_inspect(const char* path, char* buffer, int64_t capacity, int64_t* needed);
/* ---- CPU reference path: STA forward and backward on host fp32 tensors, no GPU needed ----
 * The same semantics as tileattn_sta_forward / tileattn_sta_backward (windows, text, text_valid, GQA, scale), computed
 * by the CPU reference (reference.hpp) over the STA plan: what PyTorch's CPU tensors run, and the kernels' oracle. */
typedef struct tileattn_sta_reference_args {
  int32_t abi_version;  /* TILEATTN_ABI_VERSION */
  int32_t accumulation; /* 0: fp32 sums, 1: fp64 sums */
  int64_t batch, q_heads, kv_heads, head_dim; /* any head_dim >= 1; kv_heads divides q_heads */
  int64_t video[3];     /* T, H, W */
  int64_t tile[3];      /* tt, th, tw (any tile: the CPU has no kernel constraints) */
  int64_t text_len;
  const float* q;       /* contiguous [batch, q_heads, tokens, head_dim], natural token order */
  const float* k;       /* contiguous [batch, kv_heads, tokens, head_dim] */
  const float* v;       /* as k */
  const int32_t* text_valid; /* optional host [batch] (clamped to [0, text_len]) */
  const int64_t* windows;    /* host array of num_windows (wt, wh, ww) triples; NULL/0 = dense */
  int64_t num_windows;       /* 0, 1 or q_heads */
  float scale;               /* 0: 1/sqrt(head_dim) */
  int32_t threads;           /* 0: every hardware thread */
} tileattn_sta_reference_args;

/* out: [batch, q_heads, tokens, head_dim]; lse (optional): [batch, q_heads, tokens], natural log (-inf: no key). */
TILEATTN_EXPORT int tileattn_sta_reference_forward(const tileattn_sta_reference_args* args, float* out, float* lse);
/* Gradients for the upstream gradient grad_out (out's shape): grad_q has q's shape, grad_k / grad_v k's (summed over
 * each GQA group). */
TILEATTN_EXPORT int tileattn_sta_reference_backward(const tileattn_sta_reference_args* args, const float* grad_out, float* grad_q,
                                    float* grad_k, float* grad_v);

/* 1 if this build has the kernels and the current device can run them, else 0. */
TILEATTN_EXPORT int tileattn_gpu_kernels_available(void);
/* sizeof the named argument struct of this ABI ("tileattn_sta_forward_args", "tileattn_sta_backward_args",
 * "tileattn_column_plan", "tileattn_fg_forward_args", "tileattn_dynamic_mask_args", "tileattn_tensor",
 * "tileattn_sta_reference_args"), or -1 for an unknown name: bindings that mirror the structs check their layout. */
TILEATTN_EXPORT int64_t tileattn_struct_size(const char* name);
TILEATTN_EXPORT const char* tileattn_last_error(void);
TILEATTN_EXPORT const char* tileattn_version(void);
TILEATTN_EXPORT int tileattn_abi_version(void);

#ifdef __cplusplus
}
#endif
#endif
