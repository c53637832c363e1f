#pragma once
// A minimal thread pool for host loops (CPU reference, synthetic captures, calibration scoring).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace tileattn::detail {

// Runs body(i) for i in [0, count) on `threads` threads (0: hardware concurrency); dynamic scheduling.
template <class Body>
void parallel_for(int64_t count, int threads, Body&& body) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, count));
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i; (i = next.fetch_add(1)) < count;) body(i);
  };
  if (threads <= 1) return worker();
  std::vector<std::jthread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
}

}  // namespace tileattn::detail
