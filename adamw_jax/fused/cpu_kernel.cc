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
// the arithmetic stays float32): 20 bytes per parameter instead of 28.
//
// Operands: scalars f32[12], the group's moment buffers m, v (and v̄), then the group's leaves:
// k parameters (when read) and k gradients. Results: m, v (v̄), then k outputs shaped as the
// leaves (none with `moments_only`: the moments alone, for XLA to form u from them). Attribute `offsets[i]` is leaf i's first element in the moment buffers; elements of
// the moment buffers that no leaf covers (padding) are left as they are (the buffers alias).
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

#include "xla/ffi/api/ffi.h"

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
void RunMomentChunk(const Chunk& chunk, const Segment& seg, const float* s, float sign, void* m,
                    void* v, void* v_max) {
  MomentLoop<Moment, kAmsgrad>(
      chunk.begin, chunk.end, s, sign, seg.grad, static_cast<Moment*>(m) + seg.offset,
      static_cast<Moment*>(v) + seg.offset,
      kAmsgrad ? static_cast<Moment*>(v_max) + seg.offset : nullptr);
}

template <typename Moment, bool kAmsgrad, bool kNesterov, bool kDecayed, bool kWriteParams>
void RunChunk(const Chunk& chunk, const Segment& seg, const float* s, float sign, void* m,
              void* v, void* v_max) {
  Loop<Moment, kAmsgrad, kNesterov, kDecayed, kWriteParams>(
      chunk.begin, chunk.end, s, sign, seg.grad, seg.param, seg.out,
      static_cast<Moment*>(m) + seg.offset, static_cast<Moment*>(v) + seg.offset,
      kAmsgrad ? static_cast<Moment*>(v_max) + seg.offset : nullptr);
}

using ChunkFn = void (*)(const Chunk&, const Segment&, const float*, float, void*, void*, void*);

// The instantiation for `flags` (amsgrad, nesterov, decayed, write_params), one at a time.
template <typename Moment, bool... kFlags>
ChunkFn Select(const bool* flags) {
  if constexpr (sizeof...(kFlags) == 4) {
    return RunChunk<Moment, kFlags...>;
  } else {
    return *flags ? Select<Moment, kFlags..., true>(flags + 1)
                  : Select<Moment, kFlags..., false>(flags + 1);
  }
}

template <typename Moment>
ChunkFn SelectMoments(bool amsgrad) {
  return amsgrad ? RunMomentChunk<Moment, true> : RunMomentChunk<Moment, false>;
}

// Work shared by the calling thread and the pool's threads. Held by shared_ptr: a pool task
// that starts after all chunks are claimed only finds nothing left to do. The thread that
// finishes the last chunk completes the call: no thread waits for another one.
struct Work {
  std::vector<Segment> segments;
  std::vector<Chunk> chunks;
  const float* scalars;
  ChunkFn run;
  float sign;  // -1 to maximize
  void *m, *v, *v_max;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  ffi::Promise finished;

  void Drain() {
    const int64_t total = static_cast<int64_t>(chunks.size());
    int64_t ran = 0;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < total; ++ran) {
      run(chunks[i], segments[chunks[i].segment], scalars, sign, m, v, v_max);
    }
    if (ran > 0 && done.fetch_add(ran, std::memory_order_acq_rel) + ran == total) {
      finished.SetAvailable();
    }
  }
};

constexpr int64_t kChunkElements = 1 << 16;  // 256 KiB of each stream: in L2 while in flight

// Checks the operands and lays the call's work out in chunks.
ffi::Error Prepare(Work& work, ffi::Buffer<ffi::F32> scalars, ffi::RemainingArgs args,
                   ffi::RemainingRets rets, ffi::Span<const int64_t> offsets, bool amsgrad,
                   bool nesterov, bool maximize, bool decayed, bool write_params,
                   bool moments_only) {
  if (scalars.element_count() != kNumScalars) {
    return ffi::Error::InvalidArgument("adamw_jax step: expected 12 scalars");
  }
  if (moments_only && (decayed || write_params)) {
    return ffi::Error::InvalidArgument("adamw_jax step: moments_only reads no parameters");
  }
  const int64_t leaves = static_cast<int64_t>(offsets.size());
  const int64_t moments = amsgrad ? 3 : 2;
  const bool reads_params = decayed || write_params;
  if (static_cast<int64_t>(args.size()) != moments + (reads_params ? 2 : 1) * leaves ||
      static_cast<int64_t>(rets.size()) != moments + (moments_only ? 0 : leaves)) {
    return ffi::Error::InvalidArgument("adamw_jax step: operand count does not match offsets");
  }
  work.scalars = scalars.typed_data();
  work.sign = maximize ? -1.0f : 1.0f;
  void* buffers[3] = {nullptr, nullptr, nullptr};
  int64_t buffer_size = 0;
  auto first_moment = args.get<ffi::AnyBuffer>(0);
  if (!first_moment.has_value()) return ffi::Error::Internal("bad moment buffer");
  const ffi::DataType moment_type = first_moment->element_type();
  for (int64_t i = 0; i < moments; ++i) {
    auto in = args.get<ffi::AnyBuffer>(i);
    auto out = rets.get<ffi::AnyBuffer>(i);
    if (!in.has_value() || !out.has_value()) return ffi::Error::Internal("bad moment buffer");
    if ((moment_type != ffi::DataType::F32 && moment_type != ffi::DataType::BF16) ||
        in->element_type() != moment_type || (*out)->element_type() != moment_type) {
      return ffi::Error::InvalidArgument(
          "adamw_jax step: moments must all be float32 or all bfloat16");
    }
    buffers[i] = (*out)->untyped_data();
    buffer_size = static_cast<int64_t>(in->element_count());
    if (buffers[i] != in->untyped_data()) {
      std::memcpy(buffers[i], in->untyped_data(), in->size_bytes());
    }
  }
  const bool flags[4] = {amsgrad, nesterov, decayed, write_params};
  const bool bf16 = moment_type == ffi::DataType::BF16;
  work.run = moments_only ? (bf16 ? SelectMoments<Bf16>(amsgrad) : SelectMoments<float>(amsgrad))
                          : (bf16 ? Select<Bf16>(flags) : Select<float>(flags));
  work.m = buffers[0];
  work.v = buffers[1];
  work.v_max = amsgrad ? buffers[2] : nullptr;
  const int64_t grads_at = moments + (reads_params ? leaves : 0);
  for (int64_t i = 0; i < leaves; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(grads_at + i);
    if (!grad.has_value()) return ffi::Error::Internal("bad leaf buffer");
    float* out_data = nullptr;
    if (!moments_only) {
      auto out = rets.get<ffi::AnyBuffer>(moments + i);
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
    if (reads_params) {
      auto param = args.get<ffi::AnyBuffer>(moments + i);
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
ffi::Future AdamStep(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, ffi::Span<const int64_t> offsets, bool amsgrad,
                     bool nesterov, bool maximize, bool decayed, bool write_params,
                     bool moments_only) {
  auto work = std::make_shared<Work>();
  ffi::Future future(work->finished);
  if (ffi::Error error = Prepare(*work, scalars, args, rets, offsets, amsgrad, nesterov, maximize,
                                 decayed, write_params, moments_only);
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
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("maximize")
                                  .Attr<bool>("decayed")
                                  .Attr<bool>("write_params")
                                  .Attr<bool>("moments_only"));
