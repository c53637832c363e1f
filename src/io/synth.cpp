// Synthetic captures with known 3D locality (tileattn synth), so calibration can be tested where the answer is known.
//
// Each local head has a locality length per axis (in tokens). Its queries and keys carry random Fourier features of
// the token's position, the rotary-embedding construction: m frequency vectors w_f, drawn per axis from
// N(0, 1 / length^2), and the pair (cos(w_f . x), sin(w_f . x)) for each. Then
//   q_i . k_j / sqrt(D) = A * mean_f cos(w_f . (x_i - x_j))  ~  A * exp(-sum_axis d_axis^2 / (2 length_axis^2))
// (Bochner's theorem), so attention falls off with distance along each axis at the head's own rate. Global heads have
// w = 0: every position looks alike and attention spreads over the whole video. A quarter of the head dimension
// carries per-prompt random content (so prompts differ and attention is not purely positional), every dimension a
// little noise; text tokens carry content only; v is random per prompt. The pattern of a head (its frequencies) is the
// same for every prompt and step, as in real DiTs. Everything is a pure function of the seed and element indices.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/parallel_for.hpp"
#include "tileattn/calibration.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t hash(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x243F6A8885A308D3ull;
  for (uint64_t p : parts) h = mix(h ^ p);
  return h;
}

struct Rng {
  uint64_t state;
  double uniform() { return (double(mix(state++) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

void validate(const SynthOptions& o) {
  const VideoGeometry geo(o.video, o.tile, o.text_len);  // validates shapes
  auto in_range = [](const char* name, int64_t v, int64_t max, const char* limit) {
    if (v < 1 || v > max) throw_argument_error(name, fmt::format("must be in [1, {}] ({}), got {}", max, limit, v));
  };
  in_range("--heads", o.heads, limits::kMaxHeads, "limits::kMaxHeads");
  in_range("--layers", o.layers, limits::kMaxStepsOrLayers, "limits::kMaxStepsOrLayers");
  in_range("--steps", o.steps, limits::kMaxStepsOrLayers, "limits::kMaxStepsOrLayers");
  in_range("--prompts", o.prompts, limits::kMaxStepsOrLayers, "limits::kMaxStepsOrLayers");
  in_range("--batch", o.batch, limits::kMaxTokens, "limits::kMaxTokens");
  if (o.head_dim < 8 || o.head_dim % 4 != 0 || o.head_dim > 4096)
    throw_argument_error("--head-dim", fmt::format("must be a multiple of 4 in [8, 4096], got {}", o.head_dim));
  checked_product({o.steps, o.layers, o.prompts}, "--steps");  // the capture count
  const int64_t bytes = checked_product({o.batch, o.heads, geo.num_tokens(), o.head_dim, element_size(o.dtype)},
                                        "--batch");
  if (bytes > limits::kMaxSynthTensorBytes)
    throw_argument_error("--batch", fmt::format("--batch x --heads x tokens (--video, --text-len) x --head-dim x dtype "
                                                "bytes = {} bytes per tensor, more than {} (limits::kMaxSynthTensorBytes)",
                                                bytes, limits::kMaxSynthTensorBytes));
  if (!(o.sharpness >= 0) || !std::isfinite(o.sharpness))
    throw_argument_error("--sharpness", fmt::format("must be >= 0 (0: automatic), got {}", o.sharpness));
}

// Stores value i of a tensor of `dtype` into raw bytes.
void store(std::vector<std::byte>& bytes, CaptureDType dtype, int64_t i, float value) {
  if (dtype == CaptureDType::fp32) {
    std::memcpy(bytes.data() + 4 * i, &value, 4);
    return;
  }
  const uint16_t bits = detail::float_to_half_bits(value, dtype == CaptureDType::bf16 ? DType::bf16 : DType::fp16);
  std::memcpy(bytes.data() + 2 * i, &bits, 2);
}

}  // namespace

std::vector<SynthHead> synth_heads(const SynthOptions& o, int64_t layer) {
  static constexpr double kFactors[4] = {0.35, 0.7, 1.4, 2.8};  // locality length / tile extent
  std::vector<SynthHead> heads(o.heads);
  for (int64_t h = 0; h < o.heads; ++h) {
    SynthHead& head = heads[h];
    head.global = h % 8 == 7 || (o.heads >= 3 && o.heads < 8 && h == o.heads - 1);
    if (head.global) continue;
    Rng rng{hash({o.seed, 1, uint64_t(layer), uint64_t(h)})};
    for (int a = 0; a < 3; ++a) {
      const int pick = h % 8 == 0 ? 0 : h % 8 == 1 ? 3 : int(rng.uniform() * 4);  // head 0 narrow, head 1 wide
      head.length[a] = kFactors[pick] * double(o.tile[a]);
    }
  }
  return heads;
}

std::vector<std::string> write_synthetic_captures(const std::string& directory, const SynthOptions& o,
                                                  const std::function<void(int64_t, int64_t)>& progress) {
  validate(o);
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) throw FileError(fmt::format("synth output directory '{}': cannot create it ({})", directory, ec.message()));
  const VideoGeometry geo(o.video, o.tile, o.text_len);
  const int64_t S = geo.num_tokens(), nv = geo.num_video_tokens(), D = o.head_dim, H = o.heads;
  const int64_t content_dims = D / 4, m = (D - content_dims) / 2;  // m (cos, sin) pairs of position features
  const double A = o.sharpness > 0 ? o.sharpness : std::log(double(S)) + 2.0;
  const double pos_amp = std::sqrt(A * std::sqrt(double(D)) / double(m));
  const double content_amp = std::sqrt(0.5 * std::sqrt(double(D)) / std::sqrt(double(content_dims)));
  const double noise_amp = 0.1 * pos_amp;
  const int64_t elements = o.batch * H * S * D, esize = element_size(o.dtype);
  const int64_t total = o.steps * o.layers * o.prompts;
  std::vector<std::string> paths;
  for (int64_t layer = 0; layer < o.layers; ++layer) {
    const std::vector<SynthHead> heads = synth_heads(o, layer);
    std::vector<double> freq(H * m * 3, 0.0);  // [head][f][axis], radians per token
    nlohmann::json locality = nlohmann::json::array();
    for (int64_t h = 0; h < H; ++h) {
      if (heads[h].global) {
        locality.push_back(nullptr);
        continue;
      }
      locality.push_back({heads[h].length[0], heads[h].length[1], heads[h].length[2]});
      Rng rng{hash({o.seed, 2, uint64_t(layer), uint64_t(h)})};
      for (int64_t f = 0; f < m; ++f)
        for (int a = 0; a < 3; ++a) freq[(h * m + f) * 3 + a] = rng.normal() / heads[h].length[a];
    }
    for (int64_t step = 0; step < o.steps; ++step) {
      for (int64_t prompt = 0; prompt < o.prompts; ++prompt) {
        std::vector<std::byte> bytes[3];
        for (auto& b : bytes) b.resize(size_t(elements * esize));
        constexpr int64_t kRows = 256;
        const int64_t chunks = (S + kRows - 1) / kRows;
        detail::parallel_for(o.batch * H * chunks, o.threads, [&](int64_t task) {
          const int64_t bh = task / chunks, h = bh % H, first = (task % chunks) * kRows;
          std::vector<double> pos(2 * m);
          for (int64_t i = first; i < std::min(first + kRows, S); ++i) {
            if (i < nv) {
              const Extent3 x = geo.token_coord(i);
              for (int64_t f = 0; f < m; ++f) {
                const double* w = &freq[(h * m + f) * 3];
                const double theta = w[0] * double(x.t) + w[1] * double(x.h) + w[2] * double(x.w);
                pos[2 * f] = pos_amp * std::cos(theta), pos[2 * f + 1] = pos_amp * std::sin(theta);
              }
            } else {
              std::fill(pos.begin(), pos.end(), 0.0);
            }
            const int64_t row = bh * S + i;
            Rng rq{hash({o.seed, 3, uint64_t(step), uint64_t(layer), uint64_t(prompt), uint64_t(row)})};
            Rng rk{hash({o.seed, 4, uint64_t(step), uint64_t(layer), uint64_t(prompt), uint64_t(row)})};
            Rng rv{hash({o.seed, 5, uint64_t(step), uint64_t(layer), uint64_t(prompt), uint64_t(row)})};
            for (int64_t d = 0; d < D; ++d) {
              const bool content = d >= 2 * m;
              const double base = content ? 0.0 : pos[d];
              const double amp = content ? content_amp : noise_amp;
              store(bytes[0], o.dtype, row * D + d, float(base + amp * rq.normal()));
              store(bytes[1], o.dtype, row * D + d, float(base + amp * rk.normal()));
              store(bytes[2], o.dtype, row * D + d, float(rv.normal()));
            }
          }
        });
        CaptureWrite w;
        w.video = o.video, w.text_len = o.text_len, w.step = step, w.layer = layer;
        w.prompt = fmt::format("synth-{}", prompt);
        w.extra_metadata = {{"synth_locality", locality.dump()}, {"synth_sharpness", fmt::format("{}", A)},
                            {"synth_seed", std::to_string(o.seed)}};
        w.batch = o.batch, w.heads = H, w.head_dim = D, w.dtype = o.dtype;
        w.q = bytes[0], w.k = bytes[1], w.v = bytes[2];
        const std::string path =
            (std::filesystem::path(directory) / fmt::format("step{}_layer{}_prompt{}.safetensors", step, layer, prompt))
                .string();
        write_capture(path, w);
        paths.push_back(path);
        if (progress) progress(int64_t(paths.size()), total);
      }
    }
  }
  return paths;
}

}  // namespace tileattn
