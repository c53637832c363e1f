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
