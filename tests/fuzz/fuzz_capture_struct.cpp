// libFuzzer, structure-aware: the fuzzer's bytes choose the fields of a well-formed-looking capture (shapes near the
// wrap points of 2^64, data offsets, dtypes, metadata values, nesting), so most inputs get past the JSON syntax and
// exercise the size and consistency checks; then the reader and the tensor loads run on the file.
#include <fuzzer/FuzzedDataProvider.h>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "tileattn/capture.hpp"

namespace {

uint64_t interesting(FuzzedDataProvider& p) {
  static const uint64_t kValues[] = {0, 1, 2, 3, 4, 7, 8, 16, 64, 255, 256, 1u << 31, (1ull << 31) - 1, 1ull << 32,
                                     (1ull << 62) + 1, 1ull << 62, 1ull << 63, (1ull << 63) - 1, ~0ull, ~0ull - 1};
  switch (p.ConsumeIntegralInRange<int>(0, 2)) {
    case 0: return p.PickValueInArray(kValues);
    case 1: return p.ConsumeIntegralInRange<uint64_t>(0, 64);
    default: return p.ConsumeIntegral<uint64_t>();
  }
}

nlohmann::json number_or_junk(FuzzedDataProvider& p) {
  switch (p.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return -static_cast<int64_t>(p.ConsumeIntegralInRange<int>(0, 5));
    case 1: return p.ConsumeFloatingPoint<double>();
    case 2: return p.ConsumeRandomLengthString(8);
    default: return interesting(p);
  }
}

std::string fmt_shape(FuzzedDataProvider& p) {
  return std::to_string(interesting(p)) + "x" + std::to_string(interesting(p)) + "x" + std::to_string(interesting(p));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  using nlohmann::json;
  json header = json::object();
  json meta = json::object();
  static const char* kKeys[] = {"video_shape", "text_len", "step", "layer", "prompt"};
  for (const char* key : kKeys)
    if (p.ConsumeBool()) meta[key] = p.ConsumeBool() ? p.ConsumeRandomLengthString(24) : std::string("1");
  if (p.ConsumeBool()) meta["video_shape"] = fmt_shape(p);
  header["__metadata__"] = meta;
  static const char* kDtypes[] = {"BF16", "F16", "F32", "I8", ""};
  const int tensors = p.ConsumeIntegralInRange<int>(0, 4);
  uint64_t offset = 0;
  for (int i = 0; i < tensors; ++i) {
    json shape = json::array();
    const int rank = p.ConsumeIntegralInRange<int>(0, 5);
    for (int d = 0; d < rank; ++d) shape.push_back(p.ConsumeBool() ? json(interesting(p)) : number_or_junk(p));
    const uint64_t span = p.ConsumeBool() ? interesting(p) : p.ConsumeIntegralInRange<uint64_t>(0, 64);
    const uint64_t begin = p.ConsumeBool() ? offset : interesting(p);
    json entry = {{"dtype", p.PickValueInArray(kDtypes)}, {"shape", shape},
                  {"data_offsets", {begin, begin + span}}};
    if (p.ConsumeBool()) entry["data_offsets"][1] = number_or_junk(p);
    header[std::string(1, "qkvx"[i])] = entry;
    offset = begin + span;
  }
  // Random strings need not be UTF-8: replaced here (finding capture_struct-crash-e78b8a6b was the harness's own
  // dump() throwing), so the reader sees them only where the raw bytes put them.
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  const int depth = p.ConsumeIntegralInRange<int>(0, 3) == 0 ? p.ConsumeIntegralInRange<int>(0, 200) : 0;
  text = std::string(depth, '[') + text + std::string(depth, ']');
  uint64_t header_len = text.size();
  if (p.ConsumeIntegralInRange<int>(0, 7) == 0) header_len = interesting(p);
  const std::string rest = p.ConsumeRemainingBytesAsString();
  std::string file(reinterpret_cast<const char*>(&header_len), 8);
  file += text;
  file += rest;
  const std::string& path =
      fuzz::write_scratch("capture-struct", reinterpret_cast<const uint8_t*>(file.data()), file.size());
  fuzz::expect_clean([&] {
    const tileattn::CaptureInfo info = tileattn::read_capture_info(path);
    if (static_cast<size_t>(info.elements()) > file.size()) __builtin_trap();
    for (int i = 0; i < 3; ++i) (void)tileattn::load_capture_tensor(info, i);
  });
  return 0;
}
