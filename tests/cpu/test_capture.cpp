// Capture files: what the writer produces the reader accepts; malformed files are rejected with a message naming the
// file, the tensor or metadata key, and the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "tileattn/calibration.hpp"
#include "tileattn/capture.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"

using namespace tileattn;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("tileattn_test_capture_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A 2x2x2 video + 2 text tokens = 10 tokens, batch 1, 2 heads, head_dim 4, fp32: q = 0, 1, 2, ..., k = q + 1000, ...
std::string write_small(const fs::path& dir, const std::string& name = "c.safetensors", int64_t layer = 0,
                        const std::string& prompt = "p0", Extent3 video = {2, 2, 2}) {
  const int64_t n = video.volume() + 2, elements = 1 * 2 * n * 4;
  std::vector<float> values[3];
  for (int t = 0; t < 3; ++t)
    for (int64_t i = 0; i < elements; ++i) values[t].push_back(float(i) + 1000.0f * t);
  auto bytes = [](const std::vector<float>& v) { return std::as_bytes(std::span<const float>(v)); };
  CaptureWrite w;
  w.video = video, w.text_len = 2, w.step = 3, w.layer = layer, w.prompt = prompt;
  w.extra_metadata = {{"note", "hello"}};
  w.heads = 2, w.head_dim = 4, w.dtype = CaptureDType::fp32;
  w.q = bytes(values[0]), w.k = bytes(values[1]), w.v = bytes(values[2]);
  const std::string path = (dir / name).string();
  write_capture(path, w);
  return path;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Rewrites the file's JSON header (the data section is kept as it is).
void edit_header(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  const std::string bytes = read_all(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, len));
  edit(header);
  const std::string text = header.dump();
  const uint64_t new_len = text.size();
  std::string out(reinterpret_cast<const char*>(&new_len), 8);
  write_all(path, out + text + bytes.substr(8 + len));
}

// Expects read_capture_info to throw FileError whose message names the file and contains every needle.
void expect_rejected(const std::string& path, std::initializer_list<std::string> needles) {
  try {
    read_capture_info(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const FileError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    for (const std::string& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
  }
}

}  // namespace

TEST(Capture, WriterAndReaderRoundTrip) {
  const fs::path dir = temp_dir("roundtrip");
  const std::string path = write_small(dir);
  const CaptureInfo info = read_capture_info(path);
  EXPECT_EQ(info.video, (Extent3{2, 2, 2}));
  EXPECT_EQ(info.text_len, 2);
  EXPECT_EQ(info.step, 3);
  EXPECT_EQ(info.prompt, "p0");
  EXPECT_EQ(info.metadata.at("note"), "hello");
  EXPECT_EQ(info.batch, 1);
  EXPECT_EQ(info.heads, 2);
  EXPECT_EQ(info.tokens, 10);
  EXPECT_EQ(info.head_dim, 4);
  EXPECT_EQ(info.dtype[1], CaptureDType::fp32);
  const std::vector<float> k = load_capture_tensor(info, 1);
  ASSERT_EQ(k.size(), 80u);
  EXPECT_EQ(k[0], 1000.0f);
  EXPECT_EQ(k[79], 1079.0f);
  const std::vector<uint16_t> v = load_capture_tensor_bf16(info, 2);
  EXPECT_EQ(detail::half_bits_to_float(v[5], DType::bf16), 2008.0f);  // 2005 in bf16 (steps of 8 above 1024)
}

TEST(Capture, Bf16CapturesKeepTheirBits) {
  const fs::path dir = temp_dir("bf16");
  SynthOptions o;
  o.video = {2, 4, 4}, o.tile = {1, 2, 2}, o.text_len = 3, o.heads = 2, o.head_dim = 8, o.layers = 1, o.prompts = 1;
  const std::vector<std::string> paths = write_synthetic_captures(dir.string(), o);
  ASSERT_EQ(paths.size(), 1u);
  const CaptureInfo info = read_capture_info(paths[0]);
  EXPECT_EQ(info.dtype[0], CaptureDType::bf16);
  const std::vector<float> q = load_capture_tensor(info, 0);
  const std::vector<uint16_t> bits = load_capture_tensor_bf16(info, 0);
  for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(detail::float_to_half_bits(q[i], DType::bf16), bits[i]);
  EXPECT_TRUE(info.metadata.contains("synth_locality"));
}

TEST(Capture, RejectsTruncatedFiles) {
  const fs::path dir = temp_dir("truncated");
  const std::string path = write_small(dir);
  const std::string bytes = read_all(path);
  write_all(path, bytes.substr(0, bytes.size() - 7));
  expect_rejected(path, {"truncated", "tensor 'v'"});
  write_all(path, bytes.substr(0, 5));
  expect_rejected(path, {"truncated", "8-byte header length"});
  write_all(path, bytes.substr(0, 40));  // cut inside the header
  expect_rejected(path, {"truncated", "header length"});
}

TEST(Capture, RejectsAHeaderLengthPastTheEnd) {
  const fs::path dir = temp_dir("header_len");
  const std::string path = write_small(dir);
  std::string bytes = read_all(path);
  const uint64_t huge = uint64_t(1) << 40;
  std::memcpy(bytes.data(), &huge, 8);
  write_all(path, bytes);
  expect_rejected(path, {"header length is 1099511627776 bytes"});
}

TEST(Capture, RejectsBadJson) {
  const fs::path dir = temp_dir("json");
  const std::string path = write_small(dir);
  std::string bytes = read_all(path);
  bytes[8] = '[';  // the header's opening brace
  write_all(path, bytes);
  expect_rejected(path, {"not valid JSON"});
}

TEST(Capture, RejectsUnsupportedDtypes) {
  const fs::path dir = temp_dir("dtype");
  const std::string path = write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["k"]["dtype"] = "I64"; });
  expect_rejected(path, {"tensor 'k'", "\"I64\"", "not supported"});
}

TEST(Capture, RejectsShapeMismatches) {
  const fs::path dir = temp_dir("shape");
  const std::string path = write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["v"]["shape"] = {1, 1, 20, 4}; });  // same byte count
  expect_rejected(path, {"tensor 'v'", "[1, 1, 20, 4]", "does not match q's shape [1, 2, 10, 4]"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["q"]["shape"] = {1, 2, 10}; });
  expect_rejected(path, {"tensor 'q'", "[B, heads, S, D]"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["q"]["shape"] = {1, 2, 10, 8}; });
  expect_rejected(path, {"tensor 'q'", "data_offsets span 320 bytes", "needs 640"});
}

TEST(Capture, RejectsTokenCountsThatDisagreeWithTheMetadata) {
  const fs::path dir = temp_dir("tokens");
  const std::string path = write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["__metadata__"]["text_len"] = "3"; });
  expect_rejected(path, {"tensor 'q'", "S = 10 tokens", "video_shape 2x2x2 and text_len 3 make 11"});
}

TEST(Capture, RejectsMissingOrUnparseableMetadata) {
  const fs::path dir = temp_dir("metadata");
  const std::string path = write_small(dir);
  for (const char* key : {"video_shape", "text_len", "step", "layer", "prompt"}) {
    write_small(dir);
    edit_header(path, [&](nlohmann::json& h) { h["__metadata__"].erase(key); });
    expect_rejected(path, {std::string("metadata key '") + key + "'", "missing"});
  }
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["__metadata__"]["video_shape"] = "2x2"; });
  expect_rejected(path, {"metadata key 'video_shape'", "'2x2'"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["__metadata__"]["step"] = "-1"; });
  expect_rejected(path, {"metadata key 'step'", "'-1'"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["__metadata__"]["layer"] = 2; });
  expect_rejected(path, {"metadata key 'layer'", "must be a string"});
}

TEST(Capture, RejectsBadOffsets) {
  const fs::path dir = temp_dir("offsets");
  const std::string path = write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["k"]["data_offsets"] = h["q"]["data_offsets"]; });
  expect_rejected(path, {"overlap"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["v"]["data_offsets"] = {960, 1280}; });
  expect_rejected(path, {"tensor 'v'", "ends at byte 1280", "only 960"});  // the data section holds 3 * 320 bytes
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h["q"]["data_offsets"] = {320, 0}; });
  expect_rejected(path, {"tensor 'q'", "data_offsets must be [begin, end]"});
  write_small(dir);
  edit_header(path, [](nlohmann::json& h) { h.erase("v"); });
  expect_rejected(path, {"tensor 'v'", "missing"});
}

TEST(Capture, ListsDirectoriesAndRejectsEmptyOnes) {
  const fs::path dir = temp_dir("list");
  EXPECT_THROW(list_captures(dir.string()), FileError);
  write_small(dir, "b.safetensors", 1);
  write_small(dir, "a.safetensors", 0);
  std::ofstream(dir / "notes.txt") << "ignored";
  const std::vector<CaptureInfo> all = list_captures(dir.string());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].layer, 0);
  EXPECT_EQ(all[1].layer, 1);
  EXPECT_THROW(list_captures((dir / "missing").string()), FileError);
}

TEST(Capture, ScoringRejectsInconsistentCaptures) {
  const fs::path dir = temp_dir("inconsistent");
  write_small(dir, "a.safetensors");
  const std::string odd = write_small(dir, "b.safetensors", 1, "p0", {2, 2, 4});
  ScoringOptions o;
  o.tile = {1, 1, 1};
  o.candidates = {{1, 1, 1}};
  o.device = ScoringDevice::cpu;
  try {
    score_captures(list_captures(dir.string()), o);
    ADD_FAILURE() << "accepted captures of two video shapes";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find(odd), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("video_shape"), std::string::npos) << e.what();
  }
  fs::remove(odd);
  const std::string twin = write_small(dir, "c.safetensors");  // same step, layer and prompt as a.safetensors
  try {
    score_captures(list_captures(dir.string()), o);
    ADD_FAILURE() << "accepted two captures of the same (step, layer, prompt)";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("both hold step 3, layer 0, prompt 'p0'"), std::string::npos) << e.what();
  }
}
