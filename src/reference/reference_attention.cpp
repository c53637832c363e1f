// CPU reference attention. Clarity first: for every query row, gather the keys it may see, compute the scaled
// scores, a max-subtracted softmax and the weighted sum of values, in fp32 or fp64.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "host/parallel_for.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"

namespace tileattn {
namespace {

void check_shape(const AttentionShape& s, size_t q, size_t k, size_t v, size_t out, size_t lse) {
  if (s.batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", s.batch));
  if (s.q_heads < 1) throw_argument_error("q_heads", fmt::format("must be >= 1, got {}", s.q_heads));
  if (s.kv_heads < 1 || s.q_heads % s.kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", s.q_heads, s.kv_heads));
  if (s.tokens < 1) throw_argument_error("tokens", fmt::format("must be >= 1, got {}", s.tokens));
  if (s.head_dim < 1) throw_argument_error("head_dim", fmt::format("must be >= 1, got {}", s.head_dim));
  const size_t nq = s.batch * s.q_heads * s.tokens * s.head_dim;
  const size_t nkv = s.batch * s.kv_heads * s.tokens * s.head_dim;
  auto expect = [](const char* name, size_t got, size_t want) {
    if (got != want) throw_argument_error(name, fmt::format("expected {} elements, got {}", want, got));
  };
  expect("q", q, nq);
  expect("k", k, nkv);
  expect("v", v, nkv);
  expect("out", out, nq);
  expect("lse", lse, s.batch * s.q_heads * s.tokens);
}

// Softmax attention of one query row over the listed keys.
template <class Acc>
void attend_row(const float* q, const float* k, const float* v, std::span<const int64_t> keys, int64_t d, Acc scale,
                std::vector<Acc>& scratch, float* out, float* lse) {
  if (keys.empty()) {
    std::fill(out, out + d, 0.0f);
    *lse = -std::numeric_limits<float>::infinity();
    return;
  }
  scratch.resize(keys.size());
  Acc max_score = -std::numeric_limits<Acc>::infinity();
  for (size_t i = 0; i < keys.size(); ++i) {
    const float* kr = k + keys[i] * d;
    Acc dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<Acc>(q[c]) * static_cast<Acc>(kr[c]);
    scratch[i] = dot * scale;
    max_score = std::max(max_score, scratch[i]);
  }
  Acc sum = 0;
  for (Acc& s : scratch) {
    s = std::exp(s - max_score);
    sum += s;
  }
  std::vector<Acc> acc(d, Acc(0));
  for (size_t i = 0; i < keys.size(); ++i) {
    const float* vr = v + keys[i] * d;
    for (int64_t c = 0; c < d; ++c) acc[c] += scratch[i] * static_cast<Acc>(vr[c]);
  }
  for (int64_t c = 0; c < d; ++c) out[c] = static_cast<float>(acc[c] / sum);
  *lse = static_cast<float>(max_score + std::log(sum));
}

// Shared driver: tasks enumerate (batch, head, group of query rows); keys_of(batch, head, query) yields the keys.
struct Problem {
  const AttentionShape& shape;
  std::span<const float> q, k, v;
  std::span<float> out, lse;
  const ReferenceOptions& options;

  template <class Acc>
  void row(int64_t b, int64_t h, int64_t query, std::span<const int64_t> keys, std::vector<Acc>& scratch) const {
    const int64_t s = shape.tokens, d = shape.head_dim;
    const int64_t kvh = h / (shape.q_heads / shape.kv_heads);
    const float* qr = q.data() + ((b * shape.q_heads + h) * s + query) * d;
    const float* kb = k.data() + (b * shape.kv_heads + kvh) * s * d;
    const float* vb = v.data() + (b * shape.kv_heads + kvh) * s * d;
    float* o = out.data() + ((b * shape.q_heads + h) * s + query) * d;
    float* l = lse.data() + (b * shape.q_heads + h) * s + query;
    Acc scale = options.scale != 0.0f ? options.scale : Acc(1) / std::sqrt(static_cast<Acc>(d));
    attend_row<Acc>(qr, kb, vb, keys, d, scale, scratch, o, l);
  }
};

template <class RowsOfTask>
void run(const Problem& p, int64_t tasks, RowsOfTask&& rows_of_task) {
  detail::parallel_for(tasks, p.options.threads, [&](int64_t task) {
    std::vector<float> scratch32;
    std::vector<double> scratch64;
    rows_of_task(task, [&](int64_t b, int64_t h, int64_t query, std::span<const int64_t> keys) {
      if (p.options.accumulation == Accumulation::fp64)
        p.row<double>(b, h, query, keys, scratch64);
      else
        p.row<float>(b, h, query, keys, scratch32);
    });
  });
}

constexpr int64_t kRowsPerTask = 32;

}  // namespace

void reference_attention_dense(const AttentionShape& shape, std::span<const float> q, std::span<const float> k,
                               std::span<const float> v, std::span<float> out, std::span<float> lse,
                               const ReferenceOptions& options) {
  check_shape(shape, q.size(), k.size(), v.size(), out.size(), lse.size());
  std::vector<int64_t> all(shape.tokens);
  for (int64_t i = 0; i < shape.tokens; ++i) all[i] = i;
  const int64_t chunks = detail::ceil_div(shape.tokens, kRowsPerTask);
  Problem p{shape, q, k, v, out, lse, options};
  run(p, shape.batch * shape.q_heads * chunks, [&](int64_t task, auto&& emit) {
    int64_t bh = task / chunks, first = (task % chunks) * kRowsPerTask;
    for (int64_t i = first; i < std::min(first + kRowsPerTask, shape.tokens); ++i)
      emit(bh / shape.q_heads, bh % shape.q_heads, i, all);
  });
}

void reference_attention_plan(const AttentionShape& shape, const BlockPlan& plan, std::span<const int32_t> text_valid,
                              std::span<const float> q, std::span<const float> k, std::span<const float> v,
                              std::span<float> out, std::span<float> lse, const ReferenceOptions& options) {
  check_shape(shape, q.size(), k.size(), v.size(), out.size(), lse.size());
  const BlockPartition& part = plan.partition();
  const VideoGeometry& g = part.geometry();
  if (shape.tokens != g.num_tokens())
    throw_argument_error("tokens", fmt::format("the plan's geometry has {} tokens, the tensors {}", g.num_tokens(),
                                               shape.tokens));
  if (shape.q_heads != plan.heads())
    throw_argument_error("q_heads", fmt::format("the plan has {} heads, the tensors {}", plan.heads(), shape.q_heads));
  if (!text_valid.empty() && static_cast<int64_t>(text_valid.size()) != shape.batch)
    throw_argument_error("text_valid", fmt::format("expected {} entries (one per batch element), got {}", shape.batch,
                                                   text_valid.size()));
  const int64_t nb = part.num_blocks();
  std::vector<std::vector<int64_t>> block_tokens(nb);
  for (int64_t b = 0; b < nb; ++b) block_tokens[b] = part.tokens(b);

  Problem p{shape, q, k, v, out, lse, options};
  run(p, shape.batch * shape.q_heads * nb, [&](int64_t task, auto&& emit) {
    int64_t b = task / (shape.q_heads * nb), h = (task / nb) % shape.q_heads, qb = task % nb;
    int64_t valid_text = g.text_len();
    if (!text_valid.empty()) valid_text = std::clamp<int64_t>(text_valid[b], 0, g.text_len());
    std::vector<int64_t> keys;
    for (int32_t kb : plan.key_blocks(h, qb))
      for (int64_t key : block_tokens[kb])
        if (key < g.num_video_tokens() + valid_text) keys.push_back(key);
    for (int64_t query : block_tokens[qb]) emit(b, h, query, keys);
  });
}

void reference_attention_masked(const AttentionShape& shape, const ElementMask& allowed, std::span<const float> q,
                                std::span<const float> k, std::span<const float> v, std::span<float> out,
                                std::span<float> lse, const ReferenceOptions& options) {
  check_shape(shape, q.size(), k.size(), v.size(), out.size(), lse.size());
  if (!allowed) throw_argument_error("allowed", "the element mask is empty");
  const int64_t chunks = detail::ceil_div(shape.tokens, kRowsPerTask);
  Problem p{shape, q, k, v, out, lse, options};
  run(p, shape.batch * shape.q_heads * chunks, [&](int64_t task, auto&& emit) {
    int64_t bh = task / chunks, first = (task % chunks) * kRowsPerTask;
    int64_t b = bh / shape.q_heads, h = bh % shape.q_heads;
    std::vector<int64_t> keys;
    for (int64_t i = first; i < std::min(first + kRowsPerTask, shape.tokens); ++i) {
      keys.clear();
      for (int64_t j = 0; j < shape.tokens; ++j)
        if (allowed(b, h, i, j)) keys.push_back(j);
      emit(b, h, i, keys);
    }
  });
}

}  // namespace tileattn
