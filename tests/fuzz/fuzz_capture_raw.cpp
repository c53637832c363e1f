// libFuzzer: the safetensors capture reader on raw bytes (header length, JSON header, data section), then loading
// every tensor of an accepted capture (which must fit the file: the reader checks sizes against it).
#include <cstddef>
#include <cstdint>

#include "fuzz_common.hpp"
#include "tileattn/capture.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::write_scratch("capture-raw", data, size);
  fuzz::expect_clean([&] {
    const tileattn::CaptureInfo info = tileattn::read_capture_info(path);
    for (int i = 0; i < 3; ++i) {
      if (static_cast<size_t>(info.elements()) > size) __builtin_trap();  // a size the file cannot hold
      (void)tileattn::load_capture_tensor(info, i);
      (void)tileattn::load_capture_tensor_bf16(info, i);
    }
  });
  return 0;
}
