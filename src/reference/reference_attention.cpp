// CPU reference attention. Clarity first: for every query row, gather the keys it may see, compute the scaled
// scores, a max-subtracted softmax and the weighted sum of values, in fp32 or fp64.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel_for.hpp"
#include "core/softmax_scale.hpp"
#include "reference/attention_shape.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"

namespace tileattn {

void detail::check_attention_inputs(const AttentionShape& s, size_t q, size_t k) {
  if (s.batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", s.batch));
  if (s.q_heads < 1) throw_argument_error("q_heads", fmt::format("must be >= 1, got {}", s.q_heads));
  if (s.kv_heads < 1 || s.q_heads % s.kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", s.q_heads, s.kv_heads));
  if (s.tokens < 1) throw_argument_error("tokens", fmt::format("must be >= 1, got {}", s.tokens));
  if (s.head_dim < 1) throw_argument_error("head_dim", fmt::format("must be >= 1, got {}", s.head_dim));
  // Checked: every later index product is bounded by these two.
  const size_t nq = static_cast<size_t>(checked_product({s.batch, s.q_heads, s.tokens, s.head_dim}, "q_heads"));
  const size_t nkv = static_cast<size_t>(checked_product({s.batch, s.kv_heads, s.tokens, s.head_dim}, "kv_heads"));
  if (q != nq) throw_argument_error("q", fmt::format("expected {} elements, got {}", nq, q));
  if (k != nkv) throw_argument_error("k", fmt::format("expected {} elements, got {}", nkv, k));
}

namespace {

void expect_size(const char* name, size_t got, size_t want) {
  if (got != want) throw_argument_error(name, fmt::format("expected {} elements, got {}", want, got));
}

void check_shape(const AttentionShape& s, size_t q, size_t k, size_t v, size_t out, size_t lse) {
  detail::check_attention_inputs(s, q, k);
  expect_size("v", v, k);
  expect_size("out", out, q);
  expect_size("lse", lse, s.batch * s.q_heads * s.tokens);
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
    const Acc scale = detail::softmax_scale<Acc>(options.scale, d);
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

void check_plan(const AttentionShape& shape, const BlockPlan& plan, std::span<const int32_t> text_valid) {
  const VideoGeometry& g = plan.partition().geometry();
  if (shape.tokens != g.num_tokens())
    throw_argument_error("tokens", fmt::format("the plan's geometry has {} tokens, the tensors {}", g.num_tokens(),
                                               shape.tokens));
  if (shape.q_heads != plan.heads())
    throw_argument_error("q_heads", fmt::format("the plan has {} heads, the tensors {}", plan.heads(), shape.q_heads));
  if (!text_valid.empty() && static_cast<int64_t>(text_valid.size()) != shape.batch)
    throw_argument_error("text_valid", fmt::format("expected {} entries (one per batch element), got {}", shape.batch,
                                                   text_valid.size()));
}

// The keys a plan lets each query block see (text keys past text_valid[b] removed), in natural token indices.
struct PlanKeys {
  const BlockPlan& plan;
  std::span<const int32_t> text_valid;
  std::vector<std::vector<int64_t>> block_tokens;

  PlanKeys(const BlockPlan& p, std::span<const int32_t> tv) : plan(p), text_valid(tv) {
    const int64_t nb = p.partition().num_blocks();
    block_tokens.resize(nb);
    for (int64_t b = 0; b < nb; ++b) block_tokens[b] = p.partition().tokens(b);
  }
  std::vector<int64_t> keys(int64_t batch, int64_t head, int64_t query_block) const {
    const VideoGeometry& g = plan.partition().geometry();
    int64_t valid_text = g.text_len();
    if (!text_valid.empty()) valid_text = std::clamp<int64_t>(text_valid[batch], 0, g.text_len());
    std::vector<int64_t> keys;
    for (int32_t kb : plan.key_blocks(head, query_block))
      for (int64_t key : block_tokens[kb])
        if (key < g.num_video_tokens() + valid_text) keys.push_back(key);
    return keys;
  }
};

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
  check_plan(shape, plan, text_valid);
  const PlanKeys plan_keys(plan, text_valid);
  const int64_t nb = plan.partition().num_blocks();
  Problem p{shape, q, k, v, out, lse, options};
  run(p, shape.batch * shape.q_heads * nb, [&](int64_t task, auto&& emit) {
    int64_t b = task / (shape.q_heads * nb), h = (task / nb) % shape.q_heads, qb = task % nb;
    const std::vector<int64_t> keys = plan_keys.keys(b, h, qb);
    for (int64_t query : plan_keys.block_tokens[qb]) emit(b, h, query, keys);
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

void reference_attention_columns(const AttentionShape& shape, const ColumnPlan& plan, std::span<const float> q,
                                 std::span<const float> k, std::span<const float> v, std::span<float> out,
                                 std::span<float> lse, const ReferenceOptions& options) {
  check_shape(shape, q.size(), k.size(), v.size(), out.size(), lse.size());
  if (shape.tokens != plan.tokens())
    throw_argument_error("tokens", fmt::format("the plan has {} tokens, the tensors {}", plan.tokens(), shape.tokens));
  if (shape.q_heads != plan.heads())
    throw_argument_error("q_heads", fmt::format("the plan has {} heads, the tensors {}", plan.heads(), shape.q_heads));
  const int64_t nqb = plan.num_query_blocks(), M = plan.query_block(), N = plan.key_group();
  Problem p{shape, q, k, v, out, lse, options};
  run(p, shape.batch * shape.q_heads * nqb, [&](int64_t task, auto&& emit) {
    const int64_t b = task / (shape.q_heads * nqb), h = (task / nqb) % shape.q_heads, qb = task % nqb;
    std::vector<int64_t> keys;
    for (int32_t g : plan.row(h, qb))
      for (int64_t key = g * N; key < std::min((g + 1) * N, shape.tokens); ++key) keys.push_back(key);
    for (int64_t query = qb * M; query < std::min((qb + 1) * M, shape.tokens); ++query) emit(b, h, query, keys);
  });
}

namespace {

// Gradients in two passes, each parallel and each output written by one task (deterministic):
//  1. per (batch, head, query block): recompute P_ij over the row's keys, dP_ij = dO_i . v_j,
//     D_i = sum_j P_ij dP_ij, dq_i = scale sum_j P_ij (dP_ij - D_i) k_j; keep lse_i and D_i;
//  2. per (batch, kv head, key block), walking the plan's transpose (the query blocks that visit it) over the group's
//     query heads: dk_j = scale sum_i dS_ij q_i and dv_j = sum_i P_ij dO_i with P_ij = exp(s_ij - lse_i).
template <class Acc>
struct BackwardProblem {
  const AttentionShape& shape;
  const PlanKeys& plan_keys;
  std::span<const float> q, k, v, grad_out;
  Acc scale;
  std::vector<Acc> lse, dsum;  // [batch, q_heads, tokens]

  const float* row(std::span<const float> t, int64_t heads, int64_t b, int64_t h, int64_t token) const {
    return t.data() + ((b * heads + h) * shape.tokens + token) * shape.head_dim;
  }
  Acc dot(const float* x, const float* y) const {
    Acc r = 0;
    for (int64_t c = 0; c < shape.head_dim; ++c) r += Acc(x[c]) * Acc(y[c]);
    return r;
  }

  void query_pass(int64_t b, int64_t h, int64_t qb, std::span<float> grad_q) {
    const int64_t d = shape.head_dim, kvh = h / (shape.q_heads / shape.kv_heads);
    const std::vector<int64_t> keys = plan_keys.keys(b, h, qb);
    std::vector<Acc> prob(keys.size()), dprob(keys.size()), dq(d);
    for (int64_t query : plan_keys.block_tokens[qb]) {
      const float* qr = row(q, shape.q_heads, b, h, query);
      const float* go = row(grad_out, shape.q_heads, b, h, query);
      float* gq = grad_q.data() + ((b * shape.q_heads + h) * shape.tokens + query) * d;
      Acc& row_lse = lse[(b * shape.q_heads + h) * shape.tokens + query];
      Acc& row_dsum = dsum[(b * shape.q_heads + h) * shape.tokens + query];
      row_lse = std::numeric_limits<Acc>::infinity();  // no keys: no probability anywhere
      row_dsum = 0;
      std::fill(gq, gq + d, 0.0f);
      if (keys.empty()) continue;
      Acc max_score = -std::numeric_limits<Acc>::infinity();
      for (size_t i = 0; i < keys.size(); ++i) {
        prob[i] = scale * dot(qr, row(k, shape.kv_heads, b, kvh, keys[i]));
        dprob[i] = dot(go, row(v, shape.kv_heads, b, kvh, keys[i]));
        max_score = std::max(max_score, prob[i]);
      }
      Acc sum = 0;
      for (Acc& x : prob) sum += (x = std::exp(x - max_score));
      for (size_t i = 0; i < keys.size(); ++i) row_dsum += (prob[i] /= sum) * dprob[i];
      row_lse = max_score + std::log(sum);
      std::fill(dq.begin(), dq.end(), Acc(0));
      for (size_t i = 0; i < keys.size(); ++i) {
        const float* kr = row(k, shape.kv_heads, b, kvh, keys[i]);
        const Acc ds = prob[i] * (dprob[i] - row_dsum);
        for (int64_t c = 0; c < d; ++c) dq[c] += ds * Acc(kr[c]);
      }
      for (int64_t c = 0; c < d; ++c) gq[c] = static_cast<float>(scale * dq[c]);
    }
  }

  void key_pass(int64_t b, int64_t kvh, int64_t kb, const BlockPlan::Transpose& transpose, std::span<float> grad_k,
                std::span<float> grad_v) const {
    const int64_t d = shape.head_dim, group = shape.q_heads / shape.kv_heads;
    const VideoGeometry& g = plan_keys.plan.partition().geometry();
    int64_t valid_text = g.text_len();
    if (!plan_keys.text_valid.empty()) valid_text = std::clamp<int64_t>(plan_keys.text_valid[b], 0, g.text_len());
    std::vector<Acc> dk(d), dv(d);
    for (int64_t key : plan_keys.block_tokens[kb]) {
      std::fill(dk.begin(), dk.end(), Acc(0));
      std::fill(dv.begin(), dv.end(), Acc(0));
      if (key < g.num_video_tokens() + valid_text) {  // hidden text keys get no gradient
        const float* kr = row(k, shape.kv_heads, b, kvh, key);
        const float* vr = row(v, shape.kv_heads, b, kvh, key);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
          for (int32_t qb : transpose.query_blocks(h, kb))
            for (int64_t query : plan_keys.block_tokens[qb]) {
              const int64_t r = (b * shape.q_heads + h) * shape.tokens + query;
              const float* qr = row(q, shape.q_heads, b, h, query);
              const float* go = row(grad_out, shape.q_heads, b, h, query);
              const Acc p = std::exp(scale * dot(qr, kr) - lse[r]);
              const Acc ds = p * (dot(go, vr) - dsum[r]);
              for (int64_t c = 0; c < d; ++c) {
                dk[c] += scale * ds * Acc(qr[c]);
                dv[c] += p * Acc(go[c]);
              }
            }
      }
      float* gk = grad_k.data() + ((b * shape.kv_heads + kvh) * shape.tokens + key) * d;
      float* gv = grad_v.data() + ((b * shape.kv_heads + kvh) * shape.tokens + key) * d;
      for (int64_t c = 0; c < d; ++c) gk[c] = static_cast<float>(dk[c]), gv[c] = static_cast<float>(dv[c]);
    }
  }
};

template <class Acc>
void backward(const AttentionShape& shape, const PlanKeys& plan_keys, std::span<const float> q,
              std::span<const float> k, std::span<const float> v, std::span<const float> grad_out,
              std::span<float> grad_q, std::span<float> grad_k, std::span<float> grad_v, const ReferenceOptions& o) {
  const Acc scale = detail::softmax_scale<Acc>(o.scale, shape.head_dim);
  const int64_t rows = shape.batch * shape.q_heads * shape.tokens, nb = plan_keys.plan.partition().num_blocks();
  BackwardProblem<Acc> p{shape, plan_keys, q, k, v, grad_out, scale, std::vector<Acc>(rows), std::vector<Acc>(rows)};
  detail::parallel_for(shape.batch * shape.q_heads * nb, o.threads, [&](int64_t task) {
    p.query_pass(task / (shape.q_heads * nb), (task / nb) % shape.q_heads, task % nb, grad_q);
  });
  const BlockPlan::Transpose transpose = plan_keys.plan.transpose();
  detail::parallel_for(shape.batch * shape.kv_heads * nb, o.threads, [&](int64_t task) {
    p.key_pass(task / (shape.kv_heads * nb), (task / nb) % shape.kv_heads, task % nb, transpose, grad_k, grad_v);
  });
}

}  // namespace

void reference_attention_plan_backward(const AttentionShape& shape, const BlockPlan& plan,
                                       std::span<const int32_t> text_valid, std::span<const float> q,
                                       std::span<const float> k, std::span<const float> v,
                                       std::span<const float> grad_out, std::span<float> grad_q,
                                       std::span<float> grad_k, std::span<float> grad_v,
                                       const ReferenceOptions& options) {
  detail::check_attention_inputs(shape, q.size(), k.size());
  expect_size("v", v.size(), k.size());
  expect_size("grad_out", grad_out.size(), q.size());
  expect_size("grad_q", grad_q.size(), q.size());
  expect_size("grad_k", grad_k.size(), k.size());
  expect_size("grad_v", grad_v.size(), k.size());
  check_plan(shape, plan, text_valid);
  const PlanKeys plan_keys(plan, text_valid);
  if (options.accumulation == Accumulation::fp64)
    backward<double>(shape, plan_keys, q, k, v, grad_out, grad_q, grad_k, grad_v, options);
  else
    backward<float>(shape, plan_keys, q, k, v, grad_out, grad_q, grad_k, grad_v, options);
}

}  // namespace tileattn
