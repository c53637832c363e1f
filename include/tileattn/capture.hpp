#pragma once
// Captured attention activations: the input of calibration (`tileattn calibrate`).
//
// One safetensors file per (denoising step, layer, prompt) holding three tensors `q`, `k`, `v` of shape
// [B, heads, S, D] (SDPA's layout, natural token order: S = T*H*W video tokens then text_len text tokens), dtype BF16,
// F16 or F32, and string metadata (safetensors' "__metadata__"):
//   video_shape "TxHxW", text_len "<int>", step "<int>", layer "<int>", prompt "<any id>"
// plus any other keys (kept in CaptureInfo::metadata; synthetic captures add "synth_locality").
//
// safetensors layout: an 8-byte little-endian header length N, N bytes of JSON header
// {"<name>": {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}, then the
// data section; offsets are relative to the data section. The reader validates everything before touching data and
// raises FileError naming the file, the tensor or key, and the problem.
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tileattn/geometry.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

enum class CaptureDType { bf16, fp16, fp32 };
const char* to_string(CaptureDType dtype);  // "BF16", "F16", "F32" (safetensors' spelling)
int64_t element_size(CaptureDType dtype);

// What the header says; no tensor data read.
struct CaptureInfo {
  std::string path;
  Extent3 video;
  int64_t text_len = 0;
  int64_t step = 0;
  int64_t layer = 0;
  std::string prompt;
  std::map<std::string, std::string> metadata;  // all of __metadata__
  int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
  CaptureDType dtype[3] = {CaptureDType::bf16, CaptureDType::bf16, CaptureDType::bf16};  // q, k, v
  uint64_t file_offset[3] = {0, 0, 0};  // absolute byte offset of q, k, v in the file

  // Per tensor; checked (ArgumentError "capture" if the product does not fit int64_t).
  int64_t elements() const { return checked_product({batch, heads, tokens, head_dim}, "capture"); }
};

inline constexpr const char* kCaptureTensorNames[3] = {"q", "k", "v"};

// Reads and validates the header of one capture file. Throws FileError.
CaptureInfo read_capture_info(const std::string& path);
// Loads tensor `which` (0 = q, 1 = k, 2 = v) converted to fp32 / to bf16 bit patterns. Throws FileError.
std::vector<float> load_capture_tensor(const CaptureInfo& info, int which);
std::vector<uint16_t> load_capture_tensor_bf16(const CaptureInfo& info, int which);
// The *.safetensors files of a directory (sorted by name), validated. Throws FileError if there are none.
std::vector<CaptureInfo> list_captures(const std::string& directory);

// Writes a capture. Each tensor holds `elements` values of `dtype` as raw little-endian bytes. `extra_metadata` is
// stored next to the required keys. Throws ArgumentError on bad sizes, FileError if the file cannot be written.
struct CaptureWrite {
  Extent3 video;
  int64_t text_len = 0;
  int64_t step = 0;
  int64_t layer = 0;
  std::string prompt;
  std::map<std::string, std::string> extra_metadata;
  int64_t batch = 1, heads = 1, head_dim = 0;
  CaptureDType dtype = CaptureDType::bf16;
  std::span<const std::byte> q, k, v;
};
void write_capture(const std::string& path, const CaptureWrite& capture);

}  // namespace tileattn
TILEATTN_PUBLIC_END
