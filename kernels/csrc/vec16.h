// Sixteen-float vectors for the CPU kernels, through GCC/Clang vector extensions.
//
// One f32x16 is one AVX-512 register under -march=native on a CPU that has it, and is
// lowered to narrower registers elsewhere, so the kernels stay portable. Loads and stores
// go through memcpy (no alignment needed, though 64-byte aligned data avoids split loads).
// bfloat16 is stored as uint16_t bits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

namespace corral_cpu {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

using bf16_bits = uint16_t;

inline f32x16 broadcast(float x) { return x - f32x16{}; }  // x - 0 folds away; x + 0 does not

inline f32x16 load16(const float* src) {
  f32x16 v;
  std::memcpy(&v, src, sizeof v);
  return v;
}

inline void store16(float* dst, f32x16 v) { std::memcpy(dst, &v, sizeof v); }

// Rows of head_dim values are read in chunks of 16. A float row's chunk c holds values
// 16c..16c+15. A bfloat16 row is read 32 values (one 64-byte load) at a time and split without
// shuffles: chunk 2j holds the even values of 32j..32j+31 (low halves of the 32-bit words,
// shifted up), chunk 2j+1 the odd ones (high halves, masked). Whatever is combined with
// chunks (query rows, accumulators) is kept in the same order: `chunk_position`.
inline f32x16 load_chunk(const float* row, int c) { return load16(row + 16 * c); }

inline f32x16 load_chunk(const bf16_bits* row, int c) {
  u32x16 words;
  std::memcpy(&words, row + 32 * (c / 2), sizeof words);
  return reinterpret_cast<f32x16>(c % 2 == 0 ? words << 16 : words & 0xffff0000u);
}

// Writes chunks back as a row: chunks c (and c + 1 for bfloat16, which stores an even/odd
// pair at once, rounding to nearest even; NaN stays a quiet NaN). Returns chunks consumed.
inline int store_chunks(float* row, int c, const f32x16* chunks) {
  store16(row + 16 * c, chunks[0]);
  return 1;
}

inline u32x16 bf16_round(f32x16 v) {  // the bfloat16 bits of v, in the low halves
  const u32x16 u = reinterpret_cast<u32x16>(v);
  const u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded;
}

inline int store_chunks(bf16_bits* row, int c, const f32x16* chunks) {
  const u32x16 words = bf16_round(chunks[0]) | (bf16_round(chunks[1]) << 16);
  std::memcpy(row + 16 * c, &words, sizeof words);
  return 2;
}

// Where value d of a row lands in chunk order.
template <typename T>
constexpr int64_t chunk_position(int64_t d) {
  if constexpr (std::is_same_v<T, float>) {
    return d;
  } else {
    const int64_t r = d % 32;
    return d - r + (r % 2) * 16 + r / 2;
  }
}

// A fixed-size buffer aligned to 64 bytes (one cache line, one f32x16).
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size)
      : data_(static_cast<T*>(::operator new(std::max<size_t>(size, 1) * sizeof(T),
                                             std::align_val_t{64}))) {}
  ~AlignedBuffer() { ::operator delete(data_, std::align_val_t{64}); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](size_t i) { return data_[i]; }

 private:
  T* data_;
};

// Horizontal max and sum: halving folds (a tree, not a 16-step dependency chain).
template <typename F>
inline float fold16(f32x16 v, F combine) {
  typedef float f32x8 __attribute__((vector_size(32)));
  typedef float f32x4 __attribute__((vector_size(16)));
  const f32x8 a = combine(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
                          __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  const f32x4 b = combine(__builtin_shufflevector(a, a, 0, 1, 2, 3),
                          __builtin_shufflevector(a, a, 4, 5, 6, 7));
  return combine(combine(b[0], b[2]), combine(b[1], b[3]));
}

inline float hmax(f32x16 v) {
  return fold16(v, [](auto x, auto y) { return x > y ? x : y; });
}

inline float hsum(f32x16 v) {
  return fold16(v, [](auto x, auto y) { return x + y; });
}

// exp(x) for x <= 0 in straight-line vector code. Inputs below -87 give about 1.6e-38
// (never a denormal). k = round(x / ln 2) through the 1.5 * 2^23 trick, r = x - k ln 2 in
// [-0.35, 0.35] (Cody-Waite: the high part of ln 2 has 9 bits, so k * ln2_hi is exact), e^r
// by its degree-7 Taylor polynomial (relative error < 6e-9), 2^k from the exponent bits.
inline f32x16 exp_nonpositive(f32x16 x) {
  const f32x16 lowest = broadcast(-87.0f);
  x = x < lowest ? lowest : x;
  const f32x16 shifter = broadcast(12582912.0f);  // 1.5 * 2^23
  const f32x16 k = (x * 1.44269504088896341f + shifter) - shifter;
  const f32x16 r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  f32x16 p = broadcast(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const i32x16 bits = (__builtin_convertvector(k, i32x16) + 127) << 23;
  return p * reinterpret_cast<f32x16>(bits);
}

// The lane sums of 16 vectors as one vector: lane j = sum of v[j]'s lanes. Four rounds of
// pairwise folds (8 + 4 + 2 + 1 shuffle pairs and adds) instead of 16 separate reductions.
inline f32x16 transpose_sum(const f32x16 (&v)[16]) {
  f32x16 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) {  // lanes 0-7: v[i], lanes 8-15: v[i + 8]
    a[i] = __builtin_shufflevector(v[i], v[i + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                                   21, 22, 23) +
           __builtin_shufflevector(v[i], v[i + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                   28, 29, 30, 31);
  }
  for (int i = 0; i < 4; ++i) {  // lane quads: i, i + 4, i + 8, i + 12
    b[i] = __builtin_shufflevector(a[i], a[i + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11,
                                   24, 25, 26, 27) +
           __builtin_shufflevector(a[i], a[i + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15,
                                   28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // lane pairs: i, i + 2, i + 4, ...
    c[i] = __builtin_shufflevector(b[i], b[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12,
                                   13, 28, 29) +
           __builtin_shufflevector(b[i], b[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27,
                                   14, 15, 30, 31);
  }
  return __builtin_shufflevector(c[0], c[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28,
                                 14, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29,
                                 15, 31);
}

}  // namespace corral_cpu
