// One-pass fused AdamW step for XLA:CPU, called through the XLA FFI (see adamw_jax/native.py).
//
// XLA:CPU compiles an elementwise AdamW step into three loops per tensor (m, then v, then the
// update reading the new m and v): about 40 bytes of memory traffic per float32 parameter. This
// kernel reads g, m, v (and θ when it is decayed or written) once and writes m, v and the update
// (or θ itself) in the same loop: 28 bytes per parameter, the bound of any AdamW step.
//
// Per element, with the scalars formed by adamw_jax.fused (same order of operations, float32):
//   g ← clamp(±g, ±G)          m ← b1·m + (1-b1)·g          v ← b2·v + (1-b2)·g²
//   v̄ ← max(v̄, v) (AMSGrad)   n ← scale·m  or  nesterov_m·m + nesterov_g·g
//   d ← sqrt(v̄·inv_c2 + eps_root) + eps      r ← n/d, or sign(n) where d = 0 (NaN stays NaN)
//   u ← -step_size·r  (- decay·θ where decayed)        out ← u, or θ + u (write_params)
//
// The moments are stored as float32, or as bfloat16 (rounded to nearest even, as XLA converts;
// the arithmetic stays float32): 20 bytes per parameter instead of 28. Every other storage
// format of adamw_jax.lowbit (attribute `formats`, one per moment) runs through the tiled loop:
// per tile of 256 elements (one block) the stored moments are decoded into float32 arrays on
// the stack, the same float32 loop steps them, and they are encoded back from the unrounded
// values, as the XLA pass does: bfloat16 and float16 to nearest or stochastically (noise: the
// counter hash of adamw_jax.lowbit._quantization, from a per-buffer seed), blockwise float16 sqrt(v)
// with a power-of-two scale, and blockwise 8-bit dynamic codes (signed for m, unsigned for
// sqrt(v)) with the absmax of the block's new values as its scale, the code index computed by
// arithmetic with the constants of adamw_jax.lowbit._quantization.code_constants (attribute `codes`).
//
// Operands: scalars f32[12], seeds u32[3] (stochastic rounding, per moment), the group's moment
// buffers m, v (and v̄) (a block format: its values, then its f32 scales), then the group's
// leaves: k parameters (when read) and k gradients. Results: the moment buffers, then k outputs
// shaped as the leaves (none with `moments_only`: the moments alone, for XLA to form u from
// them). Attribute `offsets[i]` is leaf i's first element in the moment buffers (a multiple of
// 256 in a block format); elements of the moment buffers that no leaf covers (padding) are
// left as they are (the buffers alias), except the tail of a leaf's last block, which is
// encoded as the zeros it holds.
//
// Threads: the leaves are cut into chunks of at most 64K elements, claimed from an atomic
// counter by the calling thread and by tasks on XLA's intra-op pool. The handler returns an
// ffi::Future as soon as every chunk is claimed; whichever thread writes the last chunk
// completes it. Results do not depend on the split: every element is computed alone.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

// With AVX-512, 16-lane vectors: the loop's divide and square root (and the block formats'
// encode arithmetic) are its bottleneck, and GCC prefers 8 lanes by default.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

namespace ffi = xla::ffi;

namespace {

enum Scalar {
  kB1, kOneMinusB1, kB2, kOneMinusB2, kInverseC2, kEps, kEpsRoot, kStepSize, kMomentScale,
  kNesterovM, kNesterovG, kDecay, kNumScalars
};

// A bfloat16 value: the high half of a float32.
struct Bf16 {
  uint16_t bits;
};

inline float Load(const float* p, int64_t i) { return p[i]; }

inline float Load(const Bf16* p, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(p[i].bits) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

inline void Store(float* p, int64_t i, float x) { p[i] = x; }

// Round to nearest even; a NaN stays a (quiet) NaN of the same sign.
inline void Store(Bf16* p, int64_t i, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  p[i].bits = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// The storage formats (adamw_jax.native.FORMATS, same numbers).
enum Format { kF32, kBF16, kF16, kInt8Blocks, kUInt8Blocks, kF16Blocks, kNumFormats };

constexpr int64_t kTile = 256;  // the block of the block formats

// One moment buffer: its values (and per-block scales), its format and its noise seed.
struct MomentBuffer {
  Format format;
  void* values;
  float* scales;  // block formats only
  uint32_t seed;
};

// The constants of one 8-bit dynamic code (adamw_jax.lowbit._quantization.code_constants), per
// decade z = 0..top, and the table that decodes a stored byte.
struct Decades {
  float threshold[8], count[8], denominator[8], high[8], low[8], ninth;
};

struct Code {
  Decades decades;
  float table[256];  // indexed by the stored byte (int8 codes: its two's-complement bits)
};

// One leaf's slice of the work: `size` elements starting at `offset` in the moment buffers.
struct Segment {
  int64_t offset, size;
  const float* grad;
  const float* param;  // null when neither decayed nor written; when written, `out` holds θ
  float* out;
};

struct Chunk {
  int64_t segment, begin, end;  // [begin, end) within the segment
};

struct Work;
using ChunkFn = void (*)(const Chunk&, const Segment&, const Work&);

// Work shared by the calling thread and the pool's threads. Held by shared_ptr: a pool task
// that starts after all chunks are claimed only finds nothing left to do. The thread that
// finishes the last chunk completes the call: no thread waits for another one.
struct Work {
  std::vector<Segment> segments;
  std::vector<Chunk> chunks;
  const float* scalars;
  ChunkFn run;
  float sign;  // -1 to maximize
  MomentBuffer moments[3];
  bool stochastic;
  Code codes[2];  // signed (m), unsigned (sqrt(v))
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  ffi::Promise finished;

  void Drain() {
    const int64_t total = static_cast<int64_t>(chunks.size());
    int64_t ran = 0;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < total; ++ran) {
      run(chunks[i], segments[chunks[i].segment], *this);
    }
    if (ran > 0 && done.fetch_add(ran, std::memory_order_acq_rel) + ran == total) {
      finished.SetAvailable();
    }
  }
};

// --- rounding, noise and codes (adamw_jax.lowbit._quantization, operation for operation) ----------

inline uint32_t Bits(float x) { return __builtin_bit_cast(uint32_t, x); }

inline float FromBits(uint32_t b) { return __builtin_bit_cast(float, b); }

// _quantization._mix: a 32-bit hash with full avalanche ("lowbias32").
inline uint32_t Mix(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  return h ^ (h >> 16);
}

// _quantization.uniform_noise's bits for element `index` of a buffer.
inline uint32_t NoiseBits(uint32_t seed, int64_t index) {
  return Mix(static_cast<uint32_t>(index) * 0x9e3779b9u + seed);
}

inline float Uniform(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1p-24f; }

// Finite x clipped to ±largest (_quantization.saturate); ±inf and NaN kept.
inline float Saturate(float x, float largest) {
  const float clipped = std::min(std::max(x, -largest), largest);
  return std::isfinite(x) ? clipped : x;
}

constexpr float kBf16Max = 0x1.fep127f;
constexpr float kF16Max = 65504.0f;

inline uint16_t Bf16Nearest(float x) {
  const uint32_t bits = Bits(x);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// _bfloat16_stochastic: add 16 random bits to the 16 that bfloat16 drops, truncate.
inline uint16_t Bf16Stochastic(float x, uint32_t noise) {
  const float s = Saturate(x, kBf16Max);
  const uint32_t truncated = (Bits(s) + (noise >> 16)) >> 16;
  return std::isnan(x) ? Bf16Nearest(s) : static_cast<uint16_t>(truncated);
}

inline uint16_t HalfBits(_Float16 h) { return __builtin_bit_cast(uint16_t, h); }

inline _Float16 Half(uint16_t b) { return __builtin_bit_cast(_Float16, b); }

// float16 <-> float32 over arrays of up to one tile: 8 lanes at a time with F16C (GCC does not
// vectorize _Float16 conversions), exact or rounded to nearest even either way.
inline void HalvesToFloats(const uint16_t* __restrict h, int64_t n, float* __restrict x) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8) {
    const __m128i in = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(in));
  }
#endif
  for (; i < n; ++i) x[i] = static_cast<float>(Half(h[i]));
}

inline void FloatsToHalves(const float* __restrict x, int64_t n, uint16_t* __restrict h) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8) {
    const __m128i out = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), out);
  }
#endif
  for (; i < n; ++i) h[i] = HalfBits(static_cast<_Float16>(x[i]));
}

// jnp.nextafter(h, ±inf) on a finite float16 h, towards +inf when `up`.
inline uint16_t HalfNextAfter(uint16_t h, bool up) {
  const bool zero = (h & 0x7fffu) == 0;
  const bool negative = (h & 0x8000u) != 0;
  const uint16_t away = static_cast<uint16_t>(up == !negative ? h + 1 : h - 1);
  return zero ? static_cast<uint16_t>(up ? 0x0001u : 0x8001u) : away;
}

// round_to_dtype(x, float16[, uniform]) of x[0, n) into h: saturated, to nearest or between
// the nearest value and its neighbour on the other side of x with probability by distance
// (noise of buffer elements at + i), in passes over the tile.
template <bool kStochastic>
inline void F16Round(const float* __restrict x, int64_t n, uint32_t seed, int64_t at,
                     uint16_t* __restrict h) {
  alignas(64) float s[kTile], back[kTile], other[kTile];
  alignas(64) uint16_t nearest[kTile], other_bits[kTile];
  for (int64_t i = 0; i < n; ++i) s[i] = Saturate(x[i], kF16Max);
  FloatsToHalves(s, n, kStochastic ? nearest : h);
  if (!kStochastic) return;
  HalvesToFloats(nearest, n, back);
  for (int64_t i = 0; i < n; ++i) other_bits[i] = HalfNextAfter(nearest[i], !(back[i] > s[i]));
  HalvesToFloats(other_bits, n, other);
  for (int64_t i = 0; i < n; ++i) {
    const float low = std::min(back[i], other[i]), high = std::max(back[i], other[i]);
    const bool up = Uniform(NoiseBits(seed, at + i)) < (s[i] - low) / (high - low);
    other[i] = up ? high : low;  // a float16 value: converting it back is exact
  }
  FloatsToHalves(other, n, other_bits);
  for (int64_t i = 0; i < n; ++i) h[i] = std::isfinite(back[i]) ? other_bits[i] : nearest[i];
}

inline float Entry(float numerator, float high, float low) {
  return numerator * high + numerator * low;
}

// _quantization._code_index: the code entry `normalized` rounds to, by arithmetic (no search):
// the decade from comparisons, k by a division estimate, one bracket fix with each neighbour.
// Top decade of 6 fraction bits (signed code) or 7 (unsigned).
template <bool kStochastic, bool kSigned>
inline int32_t CodeIndex(float normalized, const Decades& c, uint32_t noise) {
  constexpr int kTop = kSigned ? 6 : 7;
  const float magnitude = std::fabs(normalized);
  float count = c.count[0], denominator = c.denominator[0], high_part = c.high[0];
  float low_part = c.low[0];
#pragma GCC unroll 8
  for (int z = 1; z <= kTop; ++z) {
    const bool in = magnitude < c.threshold[z];
    count = in ? c.count[z] : count;
    denominator = in ? c.denominator[z] : denominator;
    high_part = in ? c.high[z] : high_part;
    low_part = in ? c.low[z] : low_part;
  }
  const bool deepest = magnitude < c.threshold[kTop];
  float k = std::floor((magnitude * denominator - count) * c.ninth);
  k = std::min(std::max(k, 0.0f), count - 1.0f);  // NaN stays NaN, as jnp.clip
  const float numerator = count + 9.0f * k;
  const float low = Entry(numerator, high_part, low_part);
  const float high = Entry(numerator + 9.0f, high_part, low_part);
  const bool below = low > magnitude, above = high < magnitude;
  const float third = Entry(numerator + (below ? -9.0f : 18.0f), high_part, low_part);
  float lo = below ? third : (above ? high : low);
  float hi = below ? low : (above ? third : high);
  k = deepest ? 0.0f : k - (below ? 1.0f : 0.0f) + (above ? 1.0f : 0.0f);
  lo = deepest ? 0.0f : lo;
  hi = deepest ? c.threshold[kTop] : hi;
  bool up;
  if (kStochastic) {
    up = Uniform(noise) < (magnitude - lo) / (hi - lo);
  } else {  // fl(a/b) >= 0.5 exactly when a/b >= 0.5 - 2^-26 (the midpoint below 0.5, a tie
            // rounding up to 0.5): checked in double, where b·(0.5 - 2^-26) is exact.
    const double a = magnitude - lo, b = hi - lo;
    up = a >= b * (0.5 - 0x1p-26);
  }
  if (!kSigned) up = up | (deepest & (magnitude > 0.0f));
  const float whole = count - 1.0f + k;
  const bool nan = std::isnan(magnitude);
  int32_t index = static_cast<int32_t>(nan ? 0.0f : whole) + (up ? 1 : 0);
  index = nan ? 1 : index;
  return normalized < 0.0f ? -index : index;
}

// --- decoding and encoding one tile --------------------------------------------------------

// x[0, n) ← the float32 moment at buffer elements [at, at + n) (`at` on a block boundary for
// the block formats; sqrt(v) formats are squared, as MomentStorage.decode does).
inline void Decode(const MomentBuffer& b, const Code* codes, int64_t at, int64_t n,
                   float* __restrict x) {
  switch (b.format) {
    case kF32: {
      const float* p = static_cast<const float*>(b.values) + at;
      for (int64_t i = 0; i < n; ++i) x[i] = p[i];
      break;
    }
    case kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(b.values) + at;
      for (int64_t i = 0; i < n; ++i) x[i] = FromBits(static_cast<uint32_t>(p[i]) << 16);
      break;
    }
    case kF16: {
      HalvesToFloats(static_cast<const uint16_t*>(b.values) + at, n, x);
      break;
    }
    case kInt8Blocks:
    case kUInt8Blocks: {
      const uint8_t* p = static_cast<const uint8_t*>(b.values) + at;
      const float* table = codes[b.format == kInt8Blocks ? 0 : 1].table;
      const float scale = b.scales[at / kTile];
      for (int64_t i = 0; i < n; ++i) x[i] = table[p[i]] * scale;
      if (b.format == kUInt8Blocks) {
        for (int64_t i = 0; i < n; ++i) x[i] = x[i] * x[i];
      }
      break;
    }
    case kF16Blocks: {
      HalvesToFloats(static_cast<const uint16_t*>(b.values) + at, n, x);
      const float scale = b.scales[at / kTile];
      for (int64_t i = 0; i < n; ++i) {
        const float s = x[i] * scale;
        x[i] = s * s;
      }
      break;
    }
    default:
      break;
  }
}

// The absmax of a block's values; a NaN is passed over, as XLA:CPU's reduction does. On the
// bits: non-negative floats order as their integers (a vectorizable integer max).
inline float BlockAbsmax(const float* __restrict x) {
  int32_t absmax = 0;
  for (int64_t i = 0; i < kTile; ++i) {
    int32_t a = static_cast<int32_t>(Bits(x[i]) & 0x7fffffffu);
    a = a > 0x7f800000 ? 0 : a;
    absmax = a > absmax ? a : absmax;
  }
  return FromBits(static_cast<uint32_t>(absmax));
}

template <bool kStochastic, bool kSigned>
inline void EncodeInt8(const MomentBuffer& b, const Code& code, int64_t at,
                       const float* __restrict x) {
  const float absmax = BlockAbsmax(x);
  const float scale = absmax > 0.0f ? absmax : 1.0f;
  const Decades decades = code.decades;  // a local copy: the byte stores alias nothing of it
  const uint32_t seed = b.seed;
  alignas(64) int32_t index[kTile];
  for (int64_t i = 0; i < kTile; ++i) {
    const uint32_t noise = kStochastic ? NoiseBits(seed, at + i) : 0u;
    index[i] = CodeIndex<kStochastic, kSigned>(x[i] / scale, decades, noise);
  }
  b.scales[at / kTile] = scale;
  uint8_t* __restrict p = static_cast<uint8_t*>(b.values) + at;
  for (int64_t i = 0; i < kTile; ++i) p[i] = static_cast<uint8_t>(index[i]);
}

template <bool kStochastic>
inline void EncodeF16Blocks(const MomentBuffer& b, int64_t at, const float* __restrict x) {
  const float absmax = BlockAbsmax(x);
  int exponent = 0;
  std::frexp(std::isfinite(absmax) ? absmax : 0.0f, &exponent);  // jnp.frexp(±inf, NaN): 0
  const float scale = absmax > 0.0f ? std::ldexp(1.0f, exponent) : 1.0f;
  b.scales[at / kTile] = scale;
  alignas(64) float scaled[kTile];
  alignas(64) uint16_t h[kTile];
  // x / 2^e as x · 2^-e: both exact (or the same correctly rounded subnormal).
  const float inverse = 1.0f / scale;
  for (int64_t i = 0; i < kTile; ++i) scaled[i] = x[i] * inverse;
  F16Round<kStochastic>(scaled, kTile, b.seed, at, h);
  uint16_t* __restrict p = static_cast<uint16_t*>(b.values) + at;
  for (int64_t i = 0; i < kTile; ++i) {
    const uint16_t smallest = scaled[i] < 0.0f ? 0x8001u : 0x0001u;  // copysign(2^-24, ·)
    const bool flushed = (h[i] & 0x7fffu) == 0 && scaled[i] != 0.0f;
    p[i] = flushed ? smallest : h[i];
  }
}

// Stores x[0, n) at buffer elements [at, at + n); a block format encodes the whole block, the
// elements past n (a leaf's tail: padding) as zeros.
template <bool kStochastic>
inline void Encode(const MomentBuffer& b, const Code* codes, int64_t at, int64_t n,
                   float* __restrict x) {
  if (b.format == kInt8Blocks || b.format == kUInt8Blocks || b.format == kF16Blocks) {
    for (int64_t i = n; i < kTile; ++i) x[i] = 0.0f;
    if (b.format == kUInt8Blocks || b.format == kF16Blocks) {
      for (int64_t i = 0; i < kTile; ++i) x[i] = std::sqrt(x[i]);
    }
  }
  switch (b.format) {
    case kF32: {
      float* p = static_cast<float*>(b.values) + at;
      for (int64_t i = 0; i < n; ++i) p[i] = x[i];
      break;
    }
    case kBF16: {
      uint16_t* p = static_cast<uint16_t*>(b.values) + at;
      for (int64_t i = 0; i < n; ++i) {
        p[i] = kStochastic ? Bf16Stochastic(x[i], NoiseBits(b.seed, at + i))
                           : Bf16Nearest(Saturate(x[i], kBf16Max));
      }
      break;
    }
    case kF16: {
      F16Round<kStochastic>(x, n, b.seed, at, static_cast<uint16_t*>(b.values) + at);
      break;
    }
    case kInt8Blocks:
      EncodeInt8<kStochastic, true>(b, codes[0], at, x);
      break;
    case kUInt8Blocks:
      EncodeInt8<kStochastic, false>(b, codes[1], at, x);
      break;
    case kF16Blocks:
      EncodeF16Blocks<kStochastic>(b, at, x);
      break;
    default:
      break;
  }
}

// The loop for one set of options: branch-free, so that the compiler vectorizes it. The
// streams are distinct arrays (`__restrict` on parameters: GCC needs no run-time alias checks).
template <typename Moment, bool kAmsgrad, bool kNesterov, bool kDecayed, bool kWriteParams>
inline void Loop(int64_t begin, int64_t end, const float* s, float sign,
                 const float* __restrict grad, const float* __restrict param,
                 float* __restrict out, Moment* __restrict m, Moment* __restrict v,
                 Moment* __restrict v_max) {
  const float limit = std::sqrt(std::numeric_limits<float>::max()) / 2.0f;
  const float b1 = s[kB1], c1 = s[kOneMinusB1], b2 = s[kB2], c2 = s[kOneMinusB2];
  const float inv_c2 = s[kInverseC2], eps = s[kEps], eps_root = s[kEpsRoot];
  const float neg_step = -s[kStepSize], scale = s[kMomentScale];
  const float nest_m = s[kNesterovM], nest_g = s[kNesterovG], decay = s[kDecay];
  for (int64_t i = begin; i < end; ++i) {
    const float g = std::min(std::max(sign * grad[i], -limit), limit);
    const float m_new = b1 * Load(m, i) + c1 * g;
    const float v_new = b2 * Load(v, i) + c2 * (g * g);
    Store(m, i, m_new);  // the step itself uses the unrounded float32 moments
    Store(v, i, v_new);
    float second = v_new;
    if (kAmsgrad) {  // jnp.maximum: a NaN on either side is the result
      const float old = Load(v_max, i);
      second = (old < v_new || std::isnan(v_new)) ? v_new : old;
      Store(v_max, i, second);
    }
    const float n = kNesterov ? nest_m * m_new + nest_g * g : scale * m_new;
    const float d = std::sqrt(second * inv_c2 + eps_root) + eps;
    // adam_ratio: n/d, or sign(n) where d is 0 (sign(±0) = ±0, sign(NaN) = NaN); a NaN d
    // (from a NaN gradient) gives NaN, as in the XLA pass.
    const float sign_n = n > 0.0f ? 1.0f : (n < 0.0f ? -1.0f : n);
    const float q = n / (d == 0.0f ? 1.0f : d);
    float u = neg_step * (d == 0.0f ? sign_n : q);
    // Writing θ, `out` holds it already (aliased, or copied in): read it there, not in `param`.
    const float theta = kWriteParams ? out[i] : (kDecayed ? param[i] : 0.0f);
    if (kDecayed) u = u - decay * theta;
    out[i] = kWriteParams ? theta + u : u;
  }
}

// The moments alone (`moments_only`): read g, m, v, write m, v (v̄), 20 bytes per parameter.
// The caller computes u from the new moments in XLA, fused into its θ + u: no buffer for u.
template <typename Moment, bool kAmsgrad>
inline void MomentLoop(int64_t begin, int64_t end, const float* s, float sign,
                       const float* __restrict grad, Moment* __restrict m, Moment* __restrict v,
                       Moment* __restrict v_max) {
  const float limit = std::sqrt(std::numeric_limits<float>::max()) / 2.0f;
  const float b1 = s[kB1], c1 = s[kOneMinusB1], b2 = s[kB2], c2 = s[kOneMinusB2];
  for (int64_t i = begin; i < end; ++i) {
    const float g = std::min(std::max(sign * grad[i], -limit), limit);
    const float v_new = b2 * Load(v, i) + c2 * (g * g);
    Store(m, i, b1 * Load(m, i) + c1 * g);
    Store(v, i, v_new);
    if (kAmsgrad) {
      const float old = Load(v_max, i);
      Store(v_max, i, (old < v_new || std::isnan(v_new)) ? v_new : old);
    }
  }
}

template <typename Moment, bool kAmsgrad>
void RunMomentChunk(const Chunk& chunk, const Segment& seg, const Work& w) {
  MomentLoop<Moment, kAmsgrad>(
      chunk.begin, chunk.end, w.scalars, w.sign, seg.grad,
      static_cast<Moment*>(w.moments[0].values) + seg.offset,
      static_cast<Moment*>(w.moments[1].values) + seg.offset,
      kAmsgrad ? static_cast<Moment*>(w.moments[2].values) + seg.offset : nullptr);
}

// The moments stored as float32 or bfloat16 to nearest: the loop reads and writes them.
template <typename Moment>
struct Direct {
  template <bool kAmsgrad, bool kNesterov, bool kDecayed, bool kWriteParams>
  static void Run(const Chunk& chunk, const Segment& seg, const Work& w) {
    Loop<Moment, kAmsgrad, kNesterov, kDecayed, kWriteParams>(
        chunk.begin, chunk.end, w.scalars, w.sign, seg.grad, seg.param, seg.out,
        static_cast<Moment*>(w.moments[0].values) + seg.offset,
        static_cast<Moment*>(w.moments[1].values) + seg.offset,
        kAmsgrad ? static_cast<Moment*>(w.moments[2].values) + seg.offset : nullptr);
  }
};

// Any other format: per tile of 256, decode to float32 on the stack, the float32 loop, encode
// (a chunk starts on a tile boundary of its segment, and a segment on a block boundary).
template <bool kStochastic>
struct Tiled {
  template <bool kAmsgrad, bool kNesterov, bool kDecayed, bool kWriteParams>
  static void Run(const Chunk& chunk, const Segment& seg, const Work& w) {
    alignas(64) float m[kTile], v[kTile], v_max[kTile];
    for (int64_t t = chunk.begin; t < chunk.end; t += kTile) {
      const int64_t n = std::min(kTile, chunk.end - t), at = seg.offset + t;
      Decode(w.moments[0], w.codes, at, n, m);
      Decode(w.moments[1], w.codes, at, n, v);
      if (kAmsgrad) Decode(w.moments[2], w.codes, at, n, v_max);
      Loop<float, kAmsgrad, kNesterov, kDecayed, kWriteParams>(
          0, n, w.scalars, w.sign, seg.grad + t, kDecayed ? seg.param + t : nullptr,
          seg.out + t, m, v, v_max);
      Encode<kStochastic>(w.moments[0], w.codes, at, n, m);
      Encode<kStochastic>(w.moments[1], w.codes, at, n, v);
      if (kAmsgrad) Encode<kStochastic>(w.moments[2], w.codes, at, n, v_max);
    }
  }
};

// The instantiation for `flags` (amsgrad, nesterov, decayed, write_params), one at a time.
template <typename Kind, bool... kFlags>
ChunkFn Select(const bool* flags) {
  if constexpr (sizeof...(kFlags) == 4) {
    return &Kind::template Run<kFlags...>;
  } else {
    return *flags ? Select<Kind, kFlags..., true>(flags + 1)
                  : Select<Kind, kFlags..., false>(flags + 1);
  }
}

template <typename Moment>
ChunkFn SelectMoments(bool amsgrad) {
  return amsgrad ? RunMomentChunk<Moment, true> : RunMomentChunk<Moment, false>;
}

constexpr int64_t kChunkElements = 1 << 16;  // 256 KiB of each stream: in L2 while in flight

constexpr int64_t kCodeFloats = 5 * 8 + 1 + 256;  // one Code in the `codes` attribute

bool IsBlocks(Format f) { return f == kInt8Blocks || f == kUInt8Blocks || f == kF16Blocks; }

ffi::DataType ValuesType(Format f) {
  switch (f) {
    case kF32: return ffi::DataType::F32;
    case kBF16: return ffi::DataType::BF16;
    case kInt8Blocks: return ffi::DataType::S8;
    case kUInt8Blocks: return ffi::DataType::U8;
    default: return ffi::DataType::F16;
  }
}

// The moment buffers (values, and scales for a block format) from args[*next], copied to the
// results where XLA did not alias them; `*next` advances past them.
ffi::Error TakeMoment(MomentBuffer& b, Format format, uint32_t seed, ffi::RemainingArgs& args,
                      ffi::RemainingRets& rets, int64_t* next, int64_t* size) {
  b.format = format;
  b.seed = seed;
  b.scales = nullptr;
  for (int part = 0; part < (IsBlocks(format) ? 2 : 1); ++part, ++*next) {
    auto in = args.get<ffi::AnyBuffer>(*next);
    auto out = rets.get<ffi::AnyBuffer>(*next);
    if (!in.has_value() || !out.has_value()) return ffi::Error::Internal("bad moment buffer");
    const ffi::DataType type = part == 0 ? ValuesType(format) : ffi::DataType::F32;
    if (in->element_type() != type || (*out)->element_type() != type) {
      return ffi::Error::InvalidArgument("adamw_jax step: a moment buffer's dtype is not its format's");
    }
    void* data = (*out)->untyped_data();
    if (data != in->untyped_data()) std::memcpy(data, in->untyped_data(), in->size_bytes());
    if (part == 0) {
      b.values = data;
      *size = static_cast<int64_t>(in->element_count());
    } else {
      b.scales = static_cast<float*>(data);
      if (static_cast<int64_t>(in->element_count()) * kTile != *size) {
        return ffi::Error::InvalidArgument("adamw_jax step: one scale per 256 values");
      }
    }
  }
  return ffi::Error::Success();
}

void TakeCode(Code& code, const float* data) {
  Decades& d = code.decades;
  std::copy(data, data + 8, d.threshold);
  std::copy(data + 8, data + 16, d.count);
  std::copy(data + 16, data + 24, d.denominator);
  std::copy(data + 24, data + 32, d.high);
  std::copy(data + 32, data + 40, d.low);
  d.ninth = data[40];
  std::copy(data + 41, data + kCodeFloats, code.table);
}

// Checks the operands and lays the call's work out in chunks.
ffi::Error Prepare(Work& work, ffi::Buffer<ffi::F32> scalars, ffi::Buffer<ffi::U32> seeds,
                   ffi::RemainingArgs args, ffi::RemainingRets rets,
                   ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> formats,
                   ffi::Span<const float> codes, bool stochastic, bool amsgrad, bool nesterov,
                   bool maximize, bool decayed, bool write_params, bool moments_only) {
  if (scalars.element_count() != kNumScalars || seeds.element_count() != 3) {
    return ffi::Error::InvalidArgument("adamw_jax step: expected 12 scalars and 3 seeds");
  }
  if (moments_only && (decayed || write_params)) {
    return ffi::Error::InvalidArgument("adamw_jax step: moments_only reads no parameters");
  }
  const int64_t moments = amsgrad ? 3 : 2;
  if (static_cast<int64_t>(formats.size()) != moments ||
      static_cast<int64_t>(codes.size()) != 2 * kCodeFloats) {
    return ffi::Error::InvalidArgument("adamw_jax step: one format per moment, two codes");
  }
  bool direct = true, blocks = false;
  for (int64_t i = 0; i < moments; ++i) {
    if (formats[i] < 0 || formats[i] >= kNumFormats) {
      return ffi::Error::InvalidArgument("adamw_jax step: unknown moment format");
    }
    const Format f = static_cast<Format>(formats[i]);
    blocks = blocks || IsBlocks(f);
    direct = direct && f == static_cast<Format>(formats[0]) &&
             (f == kF32 || (f == kBF16 && !stochastic));
  }
  if (moments_only && !(direct && formats[0] == kF32)) {
    return ffi::Error::InvalidArgument("adamw_jax step: moments_only takes float32 moments");
  }
  const int64_t leaves = static_cast<int64_t>(offsets.size());
  const bool reads_params = decayed || write_params;
  work.scalars = scalars.typed_data();
  work.sign = maximize ? -1.0f : 1.0f;
  work.stochastic = stochastic;
  TakeCode(work.codes[0], codes.begin());
  TakeCode(work.codes[1], codes.begin() + kCodeFloats);
  int64_t next = 0, buffer_size = -1;
  for (int64_t i = 0; i < moments; ++i) {
    int64_t size = 0;
    if (ffi::Error error = TakeMoment(work.moments[i], static_cast<Format>(formats[i]),
                                      seeds.typed_data()[i], args, rets, &next, &size);
        error.failure()) {
      return error;
    }
    // A plain buffer holds the group's elements, a block one rounds them up to whole blocks.
    buffer_size = buffer_size < 0 ? size : std::min(buffer_size, size);
  }
  const int64_t moment_buffers = next;
  if (static_cast<int64_t>(args.size()) != moment_buffers + (reads_params ? 2 : 1) * leaves ||
      static_cast<int64_t>(rets.size()) != moment_buffers + (moments_only ? 0 : leaves)) {
    return ffi::Error::InvalidArgument("adamw_jax step: operand count does not match offsets");
  }
  const bool flags[4] = {amsgrad, nesterov, decayed, write_params};
  const bool bf16 = formats[0] == kBF16;
  if (moments_only) {
    work.run = SelectMoments<float>(amsgrad);
  } else if (direct) {
    work.run = bf16 ? Select<Direct<Bf16>>(flags) : Select<Direct<float>>(flags);
  } else {
    work.run = stochastic ? Select<Tiled<true>>(flags) : Select<Tiled<false>>(flags);
  }
  const int64_t grads_at = moment_buffers + (reads_params ? leaves : 0);
  for (int64_t i = 0; i < leaves; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(grads_at + i);
    if (!grad.has_value()) return ffi::Error::Internal("bad leaf buffer");
    float* out_data = nullptr;
    if (!moments_only) {
      auto out = rets.get<ffi::AnyBuffer>(moment_buffers + i);
      if (!out.has_value()) return ffi::Error::Internal("bad leaf buffer");
      if ((*out)->element_type() != ffi::F32) {
        return ffi::Error::InvalidArgument("adamw_jax step: leaves must be float32");
      }
      out_data = static_cast<float*>((*out)->untyped_data());
    }
    if (grad->element_type() != ffi::F32) {
      return ffi::Error::InvalidArgument("adamw_jax step: leaves must be float32");
    }
    Segment seg{offsets[i], static_cast<int64_t>(grad->element_count()),
                static_cast<const float*>(grad->untyped_data()), nullptr, out_data};
    if (seg.offset < 0 || seg.offset + seg.size > buffer_size) {
      return ffi::Error::InvalidArgument("adamw_jax step: a leaf lies outside the moments");
    }
    if (blocks && seg.offset % kTile != 0) {
      return ffi::Error::InvalidArgument("adamw_jax step: a leaf does not start on a block");
    }
    if (reads_params) {
      auto param = args.get<ffi::AnyBuffer>(moment_buffers + i);
      if (!param.has_value() || param->element_type() != ffi::F32 ||
          static_cast<int64_t>(param->element_count()) != seg.size) {
        return ffi::Error::InvalidArgument("adamw_jax step: parameter and gradient differ");
      }
      seg.param = static_cast<const float*>(param->untyped_data());
      if (write_params && seg.param != seg.out) std::copy(seg.param, seg.param + seg.size, seg.out);
    }
    for (int64_t begin = 0; begin < seg.size; begin += kChunkElements) {
      work.chunks.push_back(Chunk{i, begin, std::min(seg.size, begin + kChunkElements)});
    }
    work.segments.push_back(seg);
  }
  return ffi::Error::Success();
}

// Returns once every chunk is claimed; the future completes when the last one is written (XLA
// runs the step's next operation then). The calling thread never waits for a pool thread that
// the OS has descheduled mid-chunk: its core goes to the process's other threads meanwhile.
ffi::Future AdamStep(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                     ffi::Buffer<ffi::U32> seeds, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, ffi::Span<const int64_t> offsets,
                     ffi::Span<const int64_t> formats, ffi::Span<const float> codes,
                     bool stochastic, bool amsgrad, bool nesterov, bool maximize, bool decayed,
                     bool write_params, bool moments_only) {
  auto work = std::make_shared<Work>();
  ffi::Future future(work->finished);
  if (ffi::Error error =
          Prepare(*work, scalars, seeds, args, rets, offsets, formats, codes, stochastic, amsgrad,
                  nesterov, maximize, decayed, write_params, moments_only);
      error.failure()) {
    work->finished.SetError(std::move(error));
    return future;
  }
  const int64_t chunks = static_cast<int64_t>(work->chunks.size());
  if (chunks == 0) {
    work->finished.SetAvailable();
    return future;
  }
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  return future;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamwJaxStep, AdamStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<ffi::Span<const int64_t>>("formats")
                                  .Attr<ffi::Span<const float>>("codes")
                                  .Attr<bool>("stochastic")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("maximize")
                                  .Attr<bool>("decayed")
                                  .Attr<bool>("write_params")
                                  .Attr<bool>("moments_only"));
