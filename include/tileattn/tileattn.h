/* tileattn C ABI: callable from C, Python (ctypes/cffi), Rust... without linking C++ or PyTorch.
 * Every function returns 0 on success or a negative tileattn_status; tileattn_last_error() then describes the
 * failure (thread-local, valid until the next call on the same thread). */
#ifndef TILEATTN_TILEATTN_H
#define TILEATTN_TILEATTN_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TILEATTN_ABI_VERSION 1

typedef enum tileattn_status {
  TILEATTN_OK = 0,
  TILEATTN_ERROR_ARGUMENT = -1,  /* a bad argument; the message names it */
  TILEATTN_ERROR_CUDA = -2,      /* a CUDA failure, or no suitable GPU / kernels in this build */
  TILEATTN_ERROR_INTERNAL = -3,
  TILEATTN_ERROR_FILE = -4       /* a file could not be read or is malformed; the message names file, key, problem */
} tileattn_status;

typedef enum tileattn_dtype { TILEATTN_BF16 = 0, TILEATTN_FP16 = 1 } tileattn_dtype;
typedef enum tileattn_layout { TILEATTN_NATURAL = 0, TILEATTN_TILE_MAJOR = 1 } tileattn_layout;

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
  int32_t reserved;
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
} tileattn_sta_forward_args;

int tileattn_sta_forward(const tileattn_sta_forward_args* args, void* cuda_stream);

/* STA backward: dQ, dK, dV of the forward call described by `forward` (its `out` is the forward output, its `lse`
 * the forward LSE, required). See tileattn::sta_backward in sta.hpp. */
typedef struct tileattn_sta_backward_args {
  tileattn_sta_forward_args forward;
  tileattn_tensor grad_out, grad_q, grad_k, grad_v;
  void* workspace;         /* device, 256-byte aligned, tileattn_sta_backward_workspace_bytes bytes */
  int64_t workspace_bytes;
  int32_t deterministic;   /* 1: bitwise reproducible dQ (slower) */
  int32_t reserved;
} tileattn_sta_backward_args;

int tileattn_sta_backward_workspace_bytes(const tileattn_sta_forward_args* forward, int64_t* bytes);
int tileattn_sta_backward(const tileattn_sta_backward_args* args, void* cuda_stream);

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

int tileattn_fg_forward_workspace_bytes(const tileattn_fg_forward_args* args, int64_t* bytes);
int tileattn_fg_forward(const tileattn_fg_forward_args* args, void* cuda_stream);

typedef enum tileattn_synthetic_mask { TILEATTN_MASK_RANDOM = 0, TILEATTN_MASK_LOCAL = 1 } tileattn_synthetic_mask;
/* Writes a synthetic mask into the device plan on the stream (see build_synthetic_column_plan in fg.hpp). video
 * (T, H, W) and text_len matter for TILEATTN_MASK_LOCAL only; video may be NULL for TILEATTN_MASK_RANDOM. */
int tileattn_build_synthetic_column_plan(const tileattn_column_plan* plan, int32_t kind, double sparsity,
                                         uint64_t seed, const int64_t video[3], int64_t text_len,
                                         int32_t keep_diagonal, void* cuda_stream);
/* Copies the plan to the host and validates it (the message names "counts" or "table"); synchronizes the stream. */
int tileattn_check_column_plan(const tileattn_column_plan* plan, void* cuda_stream);

/* Reads a mask-strategy file (FastVideo's format or tileattn's), validates it, and writes it in tileattn's JSON format
 * (NUL-terminated) into buffer. *needed receives the size the text needs (NUL included); if capacity is smaller the
 * call returns TILEATTN_ERROR_ARGUMENT naming "capacity" and writes nothing: call again with a larger buffer. */
int tileattn_mask_strategy_read(const char* path, char* buffer, int64_t capacity, int64_t* needed);
/* Reads and validates a capture file (safetensors with q, k, v and calibration metadata, see capture.hpp) and writes
 * a JSON summary into buffer, sized as for tileattn_mask_strategy_read: {"video_shape", "text_len", "step", "layer",
 * "prompt", "metadata", "shape": [B, heads, S, D], "dtypes": {"q": "BF16", ...}, "l2_norms": {"q": ..., ...}}. */
int tileattn_capture_inspect(const char* path, char* buffer, int64_t capacity, int64_t* needed);
/* 1 if this build has the kernels and the current device can run them, else 0. */
int tileattn_gpu_kernels_available(void);
const char* tileattn_last_error(void);
const char* tileattn_version(void);
int tileattn_abi_version(void);

#ifdef __cplusplus
}
#endif
#endif
