// Paged decode attention on CPU: one query token per sequence over its block table.
//
// Registered as torch.ops.corral_cpu.paged_decode_attention (built and loaded by
// corral/kernels/cpu_extension.py). K/V are read in place from the paged cache, each row
// once: a piece owns one (sequence, KV head) and a range of its context tokens, holds the
// query rows of the KV head's whole GQA group, and makes two passes over its tokens:
//   pass 1: each K row once -> G scaled scores in fp32, 16 tokens at a time, then an exact
//           softmax numerator per query row (max, exp, sum);
//   pass 2: each V row once -> G weighted sums, fp32 accumulators held in registers.
// Pieces come from decode_plan.h (equal work per thread, long contexts cut and merged).
//
// Threads: torch's own intra-op pool through torch_parallel_for (stable C shim). The inline
// at::parallel_for would need this file compiled with -fopenmp, and without it silently
// runs on one thread. Vectors: vec16.h (GCC/Clang vector extensions); with AVX512-BF16 the
// bfloat16 scores use its dot-product instruction. Rows are prefetched ahead of use, since
// the block table scatters them where the hardware prefetchers cannot follow.
//
// Layouts: query/out [num_seqs, num_heads, head_dim] (unit stride on head_dim), caches
// [num_blocks, block_size, num_kv_heads, head_dim] contiguous, block_tables int32
// [num_seqs, max_blocks] (unit stride on blocks), seq_lens int32 [num_seqs]. float32 or
// bfloat16 (query, caches and out alike); a context length of 0 gives zeros. head_dim 64 and
// 128 take the vector path, any other head_dim a plain loop path.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/stable/c/shim.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "decode_plan.h"
#include "vec16.h"

namespace corral_cpu {
namespace {

inline float to_float(float x) { return x; }

inline float to_float(bf16_bits x) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(x) << 16);
}

inline void from_float(float x, float* dst) { *dst = x; }

// Round to nearest even; NaN stays a (quiet) NaN.
inline void from_float(float x, bf16_bits* dst) {
  uint32_t u = __builtin_bit_cast(uint32_t, x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    *dst = static_cast<bf16_bits>((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *dst = static_cast<bf16_bits>(u >> 16);
}

struct Problem {
  const void* query;
  int64_t q_seq_stride, q_head_stride;  // elements
  const void* k_cache;
  const void* v_cache;
  int64_t token_stride;  // elements between consecutive slots: num_kv_heads * head_dim
  const int32_t* block_tables;
  int64_t table_stride;
  void* out;
  int64_t out_seq_stride, out_head_stride;
  int64_t group, head_dim, block_size;
  float scale;
};

// Partial results of cut (sequence, KV head)s: per slot, G rows of head_dim unnormalised
// outputs and each row's max score and sum of exponentials.
struct Partials {
  std::vector<float> acc;  // [num_slots, G, head_dim]
  std::vector<float> max;  // [num_slots, G]
  std::vector<float> sum;  // [num_slots, G]
};

constexpr int64_t kTile = 16;           // tokens per score tile: one f32x16 of scores
constexpr int64_t kPrefetchTokens = 32;  // rows are prefetched this many tokens ahead

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch, sized for the longest piece of a chunk.
struct Scratch {
  AlignedBuffer<int64_t> rows;   // [n_pad] element offset of each token's row in a cache
  AlignedBuffer<float> q;        // [G, head_dim] fp32 query rows, in chunk order
  AlignedBuffer<float> scores;   // [G, n_pad] scores, then softmax numerators
  AlignedBuffer<float> acc;      // [G, head_dim] in chunk order
  AlignedBuffer<float> widened;  // [kTile, head_dim] K rows as fp32, in chunk order
  std::vector<float> max, sum;   // [G]

  Scratch(int64_t group, int64_t head_dim, int64_t max_tokens)
      : rows(round_up(std::max<int64_t>(max_tokens, 1), kTile)),
        q(group * head_dim),
        scores(group * round_up(std::max<int64_t>(max_tokens, 1), kTile)),
        acc(group * head_dim),
        widened(kTile * head_dim),
        max(group),
        sum(group) {}
};

template <typename T>
inline void prefetch_row(const T* row, int64_t dim) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) {
    __builtin_prefetch(bytes + b);
  }
}

// scores[g, :n] -> exp(scores[g, :n] - max_g) in place, padding [n, n_pad) -> 0; each row's
// max and sum of exponentials into s.max, s.sum.
inline void softmax_numerators(Scratch& s, int64_t group, int64_t n, int64_t n_pad) {
  const f32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t g = 0; g < group; ++g) {
    float* sg = s.scores.data() + g * n_pad;
    f32x16 mx = broadcast(sg[0]);
    for (int64_t t = 0; t < n_pad; t += kTile) {
      f32x16 x = load16(sg + t);
      if (t + kTile > n) x = lane < static_cast<float>(n - t) ? x : mx;
      mx = x > mx ? x : mx;
    }
    const float m = hmax(mx);
    f32x16 total = {};
    for (int64_t t = 0; t < n_pad; t += kTile) {
      f32x16 e = exp_nonpositive(load16(sg + t) - m);
      if (t + kTile > n) e = lane < static_cast<float>(n - t) ? e : f32x16{};
      store16(sg + t, e);
      total += e;
    }
    s.max[g] = m;
    s.sum[g] = hsum(total);
  }
}

// --- Vector path: head_dim = 16 * NC ------------------------------------------------------

// Scores of one tile of 16 rows (fp32, chunk order) for every query row:
// scores[g, j] = scale * q_g . k_j, with q in chunk order too.
template <int NC>
inline void score_tile(const float* const (&k)[kTile], const float* q, int64_t group,
                       float scale, float* scores, int64_t n_pad) {
  for (int64_t g = 0; g < group; ++g) {
    f32x16 qv[NC];
    for (int c = 0; c < NC; ++c) qv[c] = load16(q + (g * NC + c) * 16);
    f32x16 dots[kTile];
    for (int j = 0; j < kTile; ++j) {
      f32x16 sum = qv[0] * load16(k[j]);
      for (int c = 1; c < NC; ++c) sum += qv[c] * load16(k[j] + 16 * c);
      dots[j] = sum;
    }
    store16(scores + g * n_pad, transpose_sum(dots) * scale);
  }
}

template <int NC>
inline void score_tile(const float* cache, const int64_t* rows, const Problem&, const float* q,
                       int64_t group, float scale, float* scores, int64_t n_pad, float*,
                       int64_t) {
  const float* k[kTile];
  for (int j = 0; j < kTile; ++j) k[j] = cache + rows[j];
  score_tile<NC>(k, q, group, scale, scores, n_pad);
}

#if defined(__AVX512BF16__)
// bfloat16 with AVX512-BF16: dot products of the raw bf16 query and K rows, 32 value pairs
// per instruction (products exact, sums in fp32); no widening.
template <int NC>
inline void score_tile(const bf16_bits* cache, const int64_t* rows, const Problem& p,
                       const float*, int64_t group, float scale, float* scores, int64_t n_pad,
                       float*, int64_t q_offset) {
  const bf16_bits* query = static_cast<const bf16_bits*>(p.query) + q_offset;
  for (int64_t g = 0; g < group; ++g) {
    const bf16_bits* qg = query + g * p.q_head_stride;
    __m512bh qv[NC / 2];
    for (int c = 0; c < NC / 2; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(qg + 32 * c);
    f32x16 dots[kTile];
    for (int j = 0; j < kTile; ++j) {
      const bf16_bits* kj = cache + rows[j];
      __m512 sum = _mm512_setzero_ps();
      for (int c = 0; c < NC / 2; ++c) {
        sum = _mm512_dpbf16_ps(sum, qv[c], (__m512bh)_mm512_loadu_si512(kj + 32 * c));
      }
      dots[j] = sum;
    }
    store16(scores + g * n_pad, transpose_sum(dots) * scale);
  }
}
#else
// bfloat16: widen the tile's K rows into fp32 (chunk order) once, for all query rows.
template <int NC>
inline void score_tile(const bf16_bits* cache, const int64_t* rows, const Problem&,
                       const float* q, int64_t group, float scale, float* scores,
                       int64_t n_pad, float* widened, int64_t) {
  const float* k[kTile];
  for (int j = 0; j < kTile; ++j) {
    const bf16_bits* src = cache + rows[j];
    float* dst = widened + j * 16 * NC;
    for (int c = 0; c < NC; ++c) store16(dst + 16 * c, load_chunk(src, c));
    k[j] = dst;
  }
  score_tile<NC>(k, q, group, scale, scores, n_pad);
}
#endif

// acc[r] = sum_i weights[r, i] * v_i for R query rows (chunk order), sums in registers.
template <typename T, int NC, int R>
inline void weighted_sum(const T* cache, const int64_t* rows, int64_t n, const float* weights,
                         int64_t n_pad, float* acc) {
  f32x16 sums[R][NC];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NC; ++c) sums[r][c] = f32x16{};
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* v = cache + rows[i];
    if (i + kPrefetchTokens < n) prefetch_row(cache + rows[i + kPrefetchTokens], 16 * NC);
    f32x16 w[R];
    for (int r = 0; r < R; ++r) w[r] = broadcast(weights[r * n_pad + i]);
    for (int c = 0; c < NC; ++c) {
      const f32x16 vc = load_chunk(v, c);
      for (int r = 0; r < R; ++r) sums[r][c] += w[r] * vc;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NC; ++c) store16(acc + (r * NC + c) * 16, sums[r][c]);
  }
}

// Query rows per weighted_sum call: R * NC accumulators within 24 of the 32 registers.
template <int NC>
constexpr int kMaxRows = 24 / NC;

template <typename T, int NC, int R = kMaxRows<NC>>
inline void weighted_sum_rows(const T* cache, const int64_t* rows, int64_t n,
                              const float* weights, int64_t n_pad, float* acc, int64_t count) {
  if constexpr (R > 1) {
    if (count < R) {
      return weighted_sum_rows<T, NC, R - 1>(cache, rows, n, weights, n_pad, acc, count);
    }
  }
  weighted_sum<T, NC, R>(cache, rows, n, weights, n_pad, acc);
}

template <typename T, int NC>
void vector_passes(const Problem& p, int64_t n, int64_t q_offset, Scratch& s) {
  const int64_t n_pad = round_up(n, kTile);
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int64_t* rows = s.rows.data();
  for (int64_t t = 0; t < n_pad; t += kTile) {
    // K rows ahead; past the last K rows, the first V rows of pass 2.
    for (int64_t i = t + kPrefetchTokens; i < t + kPrefetchTokens + kTile; ++i) {
      if (i < n) {
        prefetch_row(k_cache + rows[i], 16 * NC);
      } else if (i >= n_pad && i - n_pad < std::min(n, kPrefetchTokens)) {
        prefetch_row(v_cache + rows[i - n_pad], 16 * NC);
      }
    }
    score_tile<NC>(k_cache, rows + t, p, s.q.data(), p.group, p.scale, s.scores.data() + t,
                   n_pad, s.widened.data(), q_offset);
  }
  softmax_numerators(s, p.group, n, n_pad);
  for (int64_t g = 0; g < p.group; g += kMaxRows<NC>) {
    const int64_t count = std::min<int64_t>(kMaxRows<NC>, p.group - g);
    weighted_sum_rows<T, NC>(v_cache, rows, n, s.scores.data() + g * n_pad, n_pad,
                             s.acc.data() + g * 16 * NC, count);
  }
}

// --- Plain path: any head_dim -------------------------------------------------------------

template <typename T>
void plain_passes(const Problem& p, int64_t n, Scratch& s) {
  const int64_t dim = p.head_dim, group = p.group, n_pad = round_up(n, kTile);
  const int64_t* rows = s.rows.data();
  const float* __restrict q = s.q.data();
  float* __restrict scores = s.scores.data();
  float* __restrict acc = s.acc.data();
  float* __restrict row = s.widened.data();
  const T* k_cache = static_cast<const T*>(p.k_cache);
  for (int64_t i = 0; i < n; ++i) {
    const T* src = k_cache + rows[i];
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) row[d] = to_float(src[d]);
    for (int64_t g = 0; g < group; ++g) {
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < dim; ++d) dot += q[g * dim + d] * row[d];
      scores[g * n_pad + i] = dot * p.scale;
    }
  }
  softmax_numerators(s, group, n, n_pad);
  std::fill(acc, acc + group * dim, 0.0f);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  for (int64_t i = 0; i < n; ++i) {
    const T* src = v_cache + rows[i];
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) row[d] = to_float(src[d]);
    for (int64_t g = 0; g < group; ++g) {
      const float w = scores[g * n_pad + i];
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) acc[g * dim + d] += w * row[d];
    }
  }
}

// --- One piece ----------------------------------------------------------------------------

// Attend one piece. NC: head_dim / 16 on the vector path, 0 on the plain path.
template <typename T, int NC>
void attend_piece(const Problem& p, const Piece& w, Scratch& s, Partials& parts) {
  const int64_t dim = p.head_dim, group = p.group, n = w.end - w.begin;
  const int64_t n_pad = round_up(n, kTile);
  // Where value d of a row sits in q/acc: chunk order on the vector path.
  auto position = [](int64_t d) { return NC > 0 ? chunk_position<T>(d) : d; };

  // Offsets of the piece's K/V rows (the same in both caches), padded to whole tiles with
  // the first row (its score is a copy of a real one, so the max stays exact).
  const int32_t* table = p.block_tables + w.seq * p.table_stride;
  const int64_t block_elems = p.block_size * p.token_stride;
  int64_t* rows = s.rows.data();
  int64_t i = 0;
  for (int64_t t = w.begin; t < w.end;) {
    const int64_t offset = t % p.block_size;
    const int64_t run = std::min(p.block_size - offset, w.end - t);
    const int64_t base = table[t / p.block_size] * block_elems + offset * p.token_stride +
                         w.kv_head * dim;
    for (int64_t j = 0; j < run; ++j) rows[i++] = base + j * p.token_stride;
    t += run;
  }
  for (; i < n_pad; ++i) rows[i] = rows[0];

  const int64_t q_offset = w.seq * p.q_seq_stride + w.kv_head * group * p.q_head_stride;
  const T* query = static_cast<const T*>(p.query) + q_offset;
  for (int64_t g = 0; g < group; ++g) {
    const T* src = query + g * p.q_head_stride;
    if constexpr (NC > 0) {
      for (int c = 0; c < NC; ++c) store16(s.q.data() + (g * NC + c) * 16, load_chunk(src, c));
    } else {
      for (int64_t d = 0; d < dim; ++d) s.q[g * dim + d] = to_float(src[d]);
    }
  }

  if constexpr (NC > 0) {
    vector_passes<T, NC>(p, n, q_offset, s);
  } else {
    plain_passes<T>(p, n, s);
  }

  if (w.slot >= 0) {
    float* dst = parts.acc.data() + w.slot * group * dim;
    for (int64_t g = 0; g < group; ++g) {
      for (int64_t d = 0; d < dim; ++d) dst[g * dim + d] = s.acc[g * dim + position(d)];
    }
    std::copy(s.max.begin(), s.max.end(), parts.max.begin() + w.slot * group);
    std::copy(s.sum.begin(), s.sum.end(), parts.sum.begin() + w.slot * group);
    return;
  }
  T* out = static_cast<T*>(p.out) + w.seq * p.out_seq_stride;
  for (int64_t g = 0; g < group; ++g) {
    T* dst = out + (w.kv_head * group + g) * p.out_head_stride;
    const float inv = 1.0f / s.sum[g];
    if constexpr (NC > 0) {
      f32x16 row[NC];
      for (int c = 0; c < NC; ++c) row[c] = load16(s.acc.data() + (g * NC + c) * 16) * inv;
      for (int c = 0; c < NC;) c += store_chunks(dst, c, row + c);
    } else {
      for (int64_t d = 0; d < dim; ++d) from_float(s.acc[g * dim + d] * inv, dst + d);
    }
  }
}

// Combine the partial results in slots [first, first + count) into the output rows of one
// (sequence, KV head).
template <typename T>
void merge_slots(const Problem& p, const Partials& parts, int64_t seq, int64_t kv_head,
                 int64_t first, int64_t count) {
  const int64_t dim = p.head_dim, group = p.group;
  std::vector<float> row(dim);
  T* out = static_cast<T*>(p.out) + seq * p.out_seq_stride;
  for (int64_t g = 0; g < group; ++g) {
    float mx = -INFINITY;
    for (int64_t j = first; j < first + count; ++j) mx = std::max(mx, parts.max[j * group + g]);
    float total = 0.0f;
    std::fill(row.begin(), row.end(), 0.0f);
    for (int64_t j = first; j < first + count; ++j) {
      const float weight = std::exp(parts.max[j * group + g] - mx);
      total += weight * parts.sum[j * group + g];
      const float* acc = parts.acc.data() + (j * group + g) * dim;
      for (int64_t d = 0; d < dim; ++d) row[d] += weight * acc[d];
    }
    T* dst = out + (kv_head * group + g) * p.out_head_stride;
    for (int64_t d = 0; d < dim; ++d) from_float(row[d] / total, dst + d);
  }
}

template <typename T, int NC>
void run(const Problem& p, const Plan& plan) {
  Partials parts;
  parts.acc.resize(plan.num_slots * p.group * p.head_dim);
  parts.max.resize(plan.num_slots * p.group);
  parts.sum.resize(plan.num_slots * p.group);
  struct Context {
    const Problem* p;
    const Plan* plan;
    Partials* parts;
  } ctx{&p, &plan, &parts};
  auto chunk_range = [](int64_t begin, int64_t end, void* raw) {
    const Context& c = *static_cast<const Context*>(raw);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Scratch s(c.p->group, c.p->head_dim, c.plan->max_tokens[chunk]);
      for (int64_t i = c.plan->chunk_start[chunk]; i < c.plan->chunk_start[chunk + 1]; ++i) {
        attend_piece<T, NC>(*c.p, c.plan->pieces[i], s, *c.parts);
      }
    }
  };
  if (plan.num_chunks() == 1) {
    chunk_range(0, 1, &ctx);
  } else {
    const AOTITorchError err = torch_parallel_for(0, plan.num_chunks(), 1, chunk_range, &ctx);
    TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "paged_decode_attention: parallel_for failed");
  }
  for (const auto& c : plan.cut) merge_slots<T>(p, parts, c[0], c[1], c[2], c[3]);
}

template <typename T>
void run_for_head_dim(const Problem& p, const Plan& plan) {
  switch (p.head_dim) {
    case 64:
      return run<T, 4>(p, plan);
    case 128:
      return run<T, 8>(p, plan);
    default:
      return run<T, 0>(p, plan);
  }
}

// Input errors come back as a message (empty when the inputs are fine) that the Python
// wrapper raises, rather than as a C++ exception thrown across the library boundary. The
// message is built without iostreams: where the process has loaded another libstdc++ than
// the one this file was compiled against, formatting numbers through a stream crashes.
inline std::string piece(const char* text) { return text; }
inline std::string piece(c10::ScalarType dtype) { return c10::toString(dtype); }
template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int>>>
std::string piece(Int value) {
  return std::to_string(value);
}

template <typename... Args>
std::string message(const Args&... args) {
  return ("paged_decode_attention: " + ... + piece(args));
}

#define CORRAL_REQUIRE(cond, ...)               \
  do {                                          \
    if (!(cond)) return message(__VA_ARGS__);   \
  } while (0)

std::string paged_decode_attention(const at::Tensor& query,         // [num_seqs, num_heads, D]
                                   const at::Tensor& k_cache,       // [blocks, bs, Hkv, D]
                                   const at::Tensor& v_cache,       // [blocks, bs, Hkv, D]
                                   const at::Tensor& block_tables,  // int32 [seqs, blocks]
                                   const at::Tensor& seq_lens,      // int32 [num_seqs]
                                   double scale, const at::Tensor& out) {
  CORRAL_REQUIRE(query.dim() == 3 && out.dim() == 3 && k_cache.dim() == 4,
              "query/out must be 3-D and the caches 4-D");
  CORRAL_REQUIRE(query.device().is_cpu() && k_cache.device().is_cpu() &&
                  v_cache.device().is_cpu() && block_tables.device().is_cpu() &&
                  seq_lens.device().is_cpu() && out.device().is_cpu(), "all tensors must be on the CPU");
  const auto dtype = query.scalar_type();
  CORRAL_REQUIRE(dtype == at::kFloat || dtype == at::kBFloat16,
              "dtype must be float32 or bfloat16, got ", dtype);
  CORRAL_REQUIRE(k_cache.scalar_type() == dtype && v_cache.scalar_type() == dtype &&
                  out.scalar_type() == dtype, "query, caches and out must share one dtype");
  CORRAL_REQUIRE(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache shapes differ");
  CORRAL_REQUIRE(k_cache.is_contiguous() && v_cache.is_contiguous(),
              "caches must be contiguous");
  CORRAL_REQUIRE(out.sizes() == query.sizes(), "out must have the query's shape");
  CORRAL_REQUIRE(query.stride(2) == 1 && out.stride(2) == 1,
              "query and out need a unit stride on head_dim");
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  const int64_t num_kv_heads = k_cache.size(2);
  CORRAL_REQUIRE(k_cache.size(3) == head_dim, "head_dim differs between query and cache");
  CORRAL_REQUIRE(num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "num_heads must be a multiple of num_kv_heads");
  CORRAL_REQUIRE(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
                 "block_tables and seq_lens must be int32");
  CORRAL_REQUIRE(block_tables.dim() == 2 && block_tables.size(0) >= num_seqs &&
                  (block_tables.size(1) <= 1 || block_tables.stride(1) == 1), "block_tables must be [num_seqs, max_blocks] with unit stride on blocks");
  CORRAL_REQUIRE(seq_lens.dim() == 1 && seq_lens.size(0) >= num_seqs && seq_lens.is_contiguous(),
                 "seq_lens must be a contiguous [num_seqs] tensor");
  if (num_seqs == 0 || num_heads == 0 || head_dim == 0) return {};

  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int64_t table_stride = block_tables.stride(0);
  const int64_t max_blocks = block_tables.size(1);
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t len = lens[s];
    CORRAL_REQUIRE(len <= max_blocks * block_size, "sequence ", s, ": length ", len,
                " exceeds its block table (", max_blocks, " blocks of ", block_size, ")");
    for (int64_t b = 0; b * block_size < len; ++b) {
      const int32_t block = tables[s * table_stride + b];
      CORRAL_REQUIRE(block >= 0 && block < num_blocks, "sequence ", s, ": block ", block,
                  " out of range");
    }
    if (len <= 0) out[s].zero_();
  }

  const Problem p{query.data_ptr(),     query.stride(0),
                  query.stride(1),      k_cache.data_ptr(),
                  v_cache.data_ptr(),   num_kv_heads * head_dim,
                  tables,               table_stride,
                  out.data_ptr(),       out.stride(0),
                  out.stride(1),        num_heads / num_kv_heads,
                  head_dim,             block_size,
                  static_cast<float>(scale)};
  const Plan plan = make_plan(lens, num_seqs, num_kv_heads, at::get_num_threads());
  if (dtype == at::kFloat) {
    run_for_head_dim<float>(p, plan);
  } else {
    run_for_head_dim<bf16_bits>(p, plan);
  }
  return {};
}

}  // namespace
}  // namespace corral_cpu

TORCH_LIBRARY(corral_cpu, m) {
  m.def(
      "paged_decode_attention(Tensor query, Tensor k_cache, Tensor v_cache, "
      "Tensor block_tables, Tensor seq_lens, float scale, Tensor(a!) out) -> str");
}

TORCH_LIBRARY_IMPL(corral_cpu, CPU, m) {
  m.impl("paged_decode_attention", &corral_cpu::paged_decode_attention);
}
