// Capture files (see capture.hpp): a small, strict safetensors reader and writer.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/input_limits.hpp"
#include "tileattn/capture.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/detail/output_files.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace {

using nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = static_cast<uint64_t>(limits::kMaxCaptureHeaderBytes);  // safetensors' own
static_assert(std::endian::native == std::endian::little, "capture I/O assumes a little-endian host");

[[noreturn]] void fail(const std::string& path, const std::string& where, const std::string& what) {
  if (where.empty()) throw FileError(fmt::format("capture '{}': {}", path, what));
  throw FileError(fmt::format("capture '{}', {}: {}", path, where, what));
}

std::string tensor_where(const char* name) { return fmt::format("tensor '{}'", quote_truncated(name)); }
std::string meta_where(const char* key) { return fmt::format("metadata key '{}'", quote_truncated(key)); }

bool parse_dtype(const std::string& text, CaptureDType& out) {
  if (text == "BF16") out = CaptureDType::bf16;
  else if (text == "F16") out = CaptureDType::fp16;
  else if (text == "F32") out = CaptureDType::fp32;
  else return false;
  return true;
}

int64_t parse_int(const std::string& path, const char* key, const std::string& text, int64_t min) {
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || value < min)
    fail(path, meta_where(key), fmt::format("expected an integer >= {}, got '{}'", min, quote_truncated(text)));
  return value;
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::ifstream open_binary(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", "cannot open the file");
  return in;
}

std::vector<std::byte> read_bytes(const CaptureInfo& info, int which) {
  const int64_t size = checked_host_bytes({info.elements(), element_size(info.dtype[which])}, "capture");
  std::ifstream in = open_binary(info.path);
  std::vector<std::byte> bytes(static_cast<size_t>(size));
  in.seekg(static_cast<std::streamoff>(info.file_offset[which]));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!in) fail(info.path, tensor_where(kCaptureTensorNames[which]), "read failed (was the file changed?)");
  return bytes;
}

}  // namespace

const char* to_string(CaptureDType dtype) {
  return dtype == CaptureDType::bf16 ? "BF16" : dtype == CaptureDType::fp16 ? "F16" : "F32";
}

int64_t element_size(CaptureDType dtype) { return dtype == CaptureDType::fp32 ? 4 : 2; }

CaptureInfo read_capture_info(const std::string& path) {
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) fail(path, "", fmt::format("cannot read the file ({})", ec.message()));
  std::ifstream in = open_binary(path);
  if (file_size < 8) fail(path, "", fmt::format("file is truncated: {} bytes, not even the 8-byte header length", file_size));
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  if (header_len > file_size - 8)
    fail(path, "", fmt::format("file is truncated: the header length is {} bytes but only {} bytes follow it "
                               "(not a safetensors file, or cut short)", header_len, file_size - 8));
  if (header_len > kMaxHeaderBytes) fail(path, "", fmt::format("header of {} bytes is implausibly large", header_len));
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  if (!in) fail(path, "", "cannot read the header");
  const json doc = detail::parse_json_bounded(header, fmt::format("capture '{}', header", path));
  if (!doc.is_object()) fail(path, "", "header must be a JSON object");

  CaptureInfo info;
  info.path = path;
  const uint64_t data_start = 8 + header_len, data_size = file_size - data_start;

  // Metadata: a flat object of strings.
  if (doc.contains("__metadata__")) {
    const json& meta = doc.at("__metadata__");
    if (!meta.is_object()) fail(path, "'__metadata__'", "must be an object of strings");
    for (const auto& [key, value] : meta.items()) {
      if (!value.is_string()) fail(path, meta_where(key.c_str()), fmt::format("must be a string, got {}", detail::brief(value)));
      info.metadata[key] = value.get<std::string>();
    }
  }
  auto meta = [&](const char* key) -> const std::string& {
    auto it = info.metadata.find(key);
    if (it == info.metadata.end())
      fail(path, meta_where(key), "missing (captures need video_shape, text_len, step, layer and prompt metadata)");
    return it->second;
  };
  try {
    info.video = parse_extent3(meta("video_shape"), "video_shape");
  } catch (const ArgumentError&) {
    fail(path, meta_where("video_shape"), fmt::format("expected 'TxHxW' (three positive integers), got '{}'",
                                                      quote_truncated(info.metadata["video_shape"])));
  }
  info.text_len = parse_int(path, "text_len", meta("text_len"), 0);
  info.step = parse_int(path, "step", meta("step"), 0);
  info.layer = parse_int(path, "layer", meta("layer"), 0);
  info.prompt = meta("prompt");

  // Every tensor entry: well formed, inside the data section, no two overlapping.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  std::vector<int64_t> shapes[3];
  for (const auto& [name, entry] : doc.items()) {
    if (name == "__metadata__") continue;
    const std::string where = tensor_where(name.c_str());
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail(path, where, "expected an object with dtype, shape and data_offsets");
    const json& off = entry.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned() ||
        off[0].get<uint64_t>() > off[1].get<uint64_t>())
      fail(path, where, fmt::format("data_offsets must be [begin, end] with 0 <= begin <= end, got {}",
                                    detail::brief(off)));
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (end > data_size)
      fail(path, where, fmt::format("file is truncated: the tensor's data ends at byte {} of the data section, which "
                                    "has only {} bytes", end, data_size));
    spans.emplace_back(begin, end);
    const auto it = std::find(std::begin(kCaptureTensorNames), std::end(kCaptureTensorNames), name);
    if (it == std::end(kCaptureTensorNames)) continue;  // other tensors are allowed and ignored
    const int which = static_cast<int>(it - std::begin(kCaptureTensorNames));
    const json& dtype = entry.at("dtype");
    if (!dtype.is_string() || !parse_dtype(dtype.get<std::string>(), info.dtype[which]))
      fail(path, where, fmt::format("dtype {} is not supported (expected \"BF16\", \"F16\" or \"F32\")",
                                    detail::brief(dtype)));
    const json& shape = entry.at("shape");
    if (!shape.is_array() || shape.size() != 4 || !std::all_of(shape.begin(), shape.end(), [](const json& d) {
          return d.is_number_unsigned() && d.get<uint64_t>() > 0 && d.get<uint64_t>() <= uint64_t(INT64_MAX);
        }))
      fail(path, where, fmt::format("shape must be [B, heads, S, D] (four positive integers < 2^63), got {}",
                                    detail::brief(shape)));
    shapes[which] = shape.get<std::vector<int64_t>>();
    // Wrap-free: the product is checked step by step against the bytes the tensor spans (which lie in the file).
    uint64_t bytes = static_cast<uint64_t>(element_size(info.dtype[which]));
    bool overflow = false;
    for (int64_t d : shapes[which]) overflow = overflow || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
    if (overflow)
      fail(path, where, fmt::format("shape {} of {} needs more than 2^64 bytes; data_offsets span {}",
                                    shape_text(shapes[which]), to_string(info.dtype[which]), end - begin));
    if (end - begin != bytes)
      fail(path, where, fmt::format("data_offsets span {} bytes but shape {} of {} needs {}", end - begin,
                                    shape_text(shapes[which]), to_string(info.dtype[which]), bytes));
    info.file_offset[which] = data_start + begin;
  }
  for (int i = 0; i < 3; ++i)
    if (shapes[i].empty()) fail(path, tensor_where(kCaptureTensorNames[i]), "missing (captures hold q, k and v)");
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      fail(path, "data_offsets", fmt::format("tensors overlap: [{}, {}) and [{}, {})", spans[i - 1].first,
                                             spans[i - 1].second, spans[i].first, spans[i].second));
  for (int i = 1; i < 3; ++i)
    if (shapes[i] != shapes[0])
      fail(path, tensor_where(kCaptureTensorNames[i]), fmt::format("shape {} does not match q's shape {}",
                                                                   shape_text(shapes[i]), shape_text(shapes[0])));
  info.batch = shapes[0][0], info.heads = shapes[0][1], info.tokens = shapes[0][2], info.head_dim = shapes[0][3];
  int64_t expected = 0;
  try {
    expected = VideoGeometry(info.video, info.video, info.text_len).num_tokens();  // the token limits, checked
  } catch (const ArgumentError& e) {
    fail(path, meta_where(e.argument() == "text_len" ? "text_len" : "video_shape"), e.what());
  }
  if (info.tokens != expected)
    fail(path, tensor_where("q"), fmt::format("S = {} tokens, but video_shape {} and text_len {} make {}", info.tokens,
                                              to_string(info.video), info.text_len, expected));
  return info;
}

std::vector<float> load_capture_tensor(const CaptureInfo& info, int which) {
  const std::vector<std::byte> bytes = read_bytes(info, which);
  std::vector<float> out(static_cast<size_t>(info.elements()));
  if (info.dtype[which] == CaptureDType::fp32) {
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  }
  const DType half = info.dtype[which] == CaptureDType::bf16 ? DType::bf16 : DType::fp16;
  const auto* bits = reinterpret_cast<const uint16_t*>(bytes.data());
  for (size_t i = 0; i < out.size(); ++i) out[i] = detail::half_bits_to_float(bits[i], half);
  return out;
}

std::vector<uint16_t> load_capture_tensor_bf16(const CaptureInfo& info, int which) {
  if (info.dtype[which] != CaptureDType::bf16) {
    const std::vector<float> values = load_capture_tensor(info, which);
    std::vector<uint16_t> out(values.size());
    for (size_t i = 0; i < values.size(); ++i) out[i] = detail::float_to_half_bits(values[i], DType::bf16);
    return out;
  }
  const std::vector<std::byte> bytes = read_bytes(info, which);
  std::vector<uint16_t> out(bytes.size() / 2);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

std::vector<CaptureInfo> list_captures(const std::string& directory) {
  std::error_code ec;
  if (!std::filesystem::is_directory(directory, ec))
    throw FileError(fmt::format("capture directory '{}': not a directory", directory));
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(directory, ec))
    if (entry.path().extension() == ".safetensors") paths.push_back(entry.path().string());
  if (ec) throw FileError(fmt::format("capture directory '{}': cannot list it ({})", directory, ec.message()));
  if (paths.empty()) throw FileError(fmt::format("capture directory '{}': no *.safetensors files", directory));
  std::sort(paths.begin(), paths.end());
  std::vector<CaptureInfo> out;
  for (const std::string& p : paths) out.push_back(read_capture_info(p));
  return out;
}

void write_capture(const std::string& path, const CaptureWrite& c) {
  if (c.batch < 1 || c.heads < 1 || c.head_dim < 1)
    throw_argument_error("capture", fmt::format("batch, heads and head_dim must be >= 1, got {}, {}, {}", c.batch,
                                                c.heads, c.head_dim));
  if (c.text_len < 0 || c.step < 0 || c.layer < 0)
    throw_argument_error("capture", "text_len, step and layer must be >= 0");
  const VideoGeometry geometry(c.video, c.video, c.text_len);  // validates the video shape
  const int64_t tokens = geometry.num_tokens();
  const uint64_t bytes = static_cast<uint64_t>(
      checked_host_bytes({c.batch, c.heads, tokens, c.head_dim, element_size(c.dtype)}, "capture"));
  const std::span<const std::byte> data[3] = {c.q, c.k, c.v};
  json header = json::object();
  for (int i = 0; i < 3; ++i) {
    if (data[i].size() != bytes)
      throw_argument_error(kCaptureTensorNames[i], fmt::format("expected {} bytes, got {}", bytes, data[i].size()));
    header[kCaptureTensorNames[i]] = {{"dtype", to_string(c.dtype)},
                                      {"shape", {c.batch, c.heads, tokens, c.head_dim}},
                                      {"data_offsets", {uint64_t(i) * bytes, uint64_t(i + 1) * bytes}}};
  }
  json meta = json::object();
  for (const auto& [key, value] : c.extra_metadata) meta[key] = value;
  meta["video_shape"] = to_string(c.video);
  meta["text_len"] = std::to_string(c.text_len);
  meta["step"] = std::to_string(c.step);
  meta["layer"] = std::to_string(c.layer);
  meta["prompt"] = c.prompt;
  header["__metadata__"] = meta;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // safetensors pads the header so the data stays 8-byte aligned
  const uint64_t header_len = text.size();
  detail::OutputFiles files;
  files.stage(path, [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& d : data) out.write(reinterpret_cast<const char*>(d.data()), static_cast<std::streamsize>(d.size()));
  }, "capture");
  files.commit();
}

}  // namespace tileattn
