// Fused exact causal attention (GQA) for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Why: XLA:CPU has no fused attention, so the JAX "flash" path runs its softmax, exp and
// reductions as separate passes over memory between small GEMMs (100-150 GFLOP/s). Here each
// 64 x 64 tile of a (query block, key block) pair stays in L1: the logits, probabilities and
// their gradients never leave the tile, tiles above the diagonal are skipped, and the products
// use register-blocked FMA micro-kernels over GCC vector types (AVX-512 or AVX2, whatever the
// build machine has). The recipe is FlashAttention's: the forward keeps the row logsumexp, the
// backward recomputes probabilities from it.
//
// Layouts (row-major, fp32): q/o/do/dq (B, T, H, K); k/v/dk/dv (B, T, G, K); lse (B, H, T).
// Query head h reads kv head h / (H / G). Work is split over (batch, head) in the forward and
// over (batch, kv head) in the backward (so dK/dV of a group accumulate without races), on the
// intra-op thread pool XLA hands to the call. lo (B, T) int32: each query's first visible key (0, or
// its document's start under model.doc_mask; nondecreasing in t): keys below it are masked too.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifdef __AVX512F__
constexpr int W = 16;  // floats per vector register
constexpr int TILE_R = 12;  // micro-kernel: 12 rows x 2 vectors = 24 of 32 zmm accumulators
#else
constexpr int W = 8;  // AVX2 (or the compiler's lowering of 32-byte vectors elsewhere)
constexpr int TILE_R = 6;  // 6 rows x 2 vectors = 12 of 16 ymm accumulators
#endif
constexpr int TILE_V = 2;  // vectors per micro-kernel row; head_dim is padded to 2 * W floats

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

constexpr int64_t BQ = 64;  // query rows per tile
constexpr int64_t BK = 64;  // keys per tile
constexpr int NV = BK / W;  // vectors per tile row

inline vf load(const float* p) { vf x; std::memcpy(&x, p, sizeof x); return x; }
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof x); }
inline vf splat(float x) { return x - (vf){}; }

// exp for the softmax: Cody-Waite range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial
// (relative error ~1e-7). Inputs are clamped to [-87, 88] so 2^n stays a normal float; callers
// zero masked entries explicitly instead of relying on exp(-inf).
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf t = x * 1.44269504088896341f + magic;
  vf n = t - magic;
  vi ni = (vi)t - (vi)magic;
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi bits = (ni + 127) << 23;
  return p * (vf)bits;
}

inline float hmax(vf x) { float m = x[0]; for (int i = 1; i < W; ++i) m = std::max(m, x[i]); return m; }
inline float hsum(vf x) { float s = 0; for (int i = 0; i < W; ++i) s += x[i]; return s; }

// Register-blocked micro-kernel: C[R x TILE_V*W] (ldc) (+)= sum_t a(i, t) * B[t, :] (ldb), with
// a(i, t) = A[i * sa + t * ta], so one kernel serves A and A transposed (P^T dO).
template <bool ACC, int R>
inline void micro(float* C, int64_t ldc, const float* A, int64_t sa, int64_t ta, const float* B,
                  int64_t ldb, int64_t n) {
  vf acc[R][TILE_V];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < TILE_V; ++j) acc[i][j] = ACC ? load(C + i * ldc + W * j) : (vf){};
  for (int64_t t = 0; t < n; ++t) {
    vf b[TILE_V];
    for (int j = 0; j < TILE_V; ++j) b[j] = load(B + t * ldb + W * j);
    for (int i = 0; i < R; ++i) {
      vf a = splat(A[i * sa + t * ta]);
      for (int j = 0; j < TILE_V; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < TILE_V; ++j) store(C + i * ldc + W * j, acc[i][j]);
}

template <bool ACC, int R>
inline void micro_rows(float* C, int64_t ldc, const float* A, int64_t sa, int64_t ta, const float* B,
                       int64_t ldb, int64_t N, int64_t n) {
  for (int64_t j = 0; j < N; j += TILE_V * W) micro<ACC, R>(C + j, ldc, A, sa, ta, B + j, ldb, n);
}

// C[M x N] (ldc) (+)= A[M x n] . B[n x N] (ldb), A element (i, t) at A[i * sa + t * ta]; N is a
// multiple of TILE_V * W (head_dim is padded), M any (TILE_R-row strips, then 4, then 1).
template <bool ACC>
void gemm(float* C, int64_t ldc, const float* A, int64_t sa, int64_t ta, const float* B,
          int64_t ldb, int64_t M, int64_t N, int64_t n) {
  int64_t i = 0;
  for (; i + TILE_R <= M; i += TILE_R) micro_rows<ACC, TILE_R>(C + i * ldc, ldc, A + i * sa, sa, ta, B, ldb, N, n);
  for (; i + 4 <= M; i += 4) micro_rows<ACC, 4>(C + i * ldc, ldc, A + i * sa, sa, ta, B, ldb, N, n);
  for (; i < M; ++i) micro_rows<ACC, 1>(C + i * ldc, ldc, A + i * sa, sa, ta, B, ldb, N, n);
}

struct Buf {  // zeroed, 64-byte aligned scratch
  float* p;
  explicit Buf(int64_t n) {
    int64_t bytes = ((n * 4 + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
    std::memset(p, 0, bytes);
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

struct Dims {
  int64_t B, T, H, G, K, Kp, Tp;
};

// Copies head h of x (B, T, heads, K) at batch b into dst[Tp x Kp] (zero padding stays zero).
void pack_rows(float* dst, const float* x, const Dims& s, int64_t heads, int64_t b, int64_t h, float mul) {
  for (int64_t t = 0; t < s.T; ++t) {
    const float* src = x + ((b * s.T + t) * heads + h) * s.K;
    for (int64_t d = 0; d < s.K; ++d) dst[t * s.Kp + d] = src[d] * mul;
  }
}

void pack_cols(float* dst, const float* x, const Dims& s, int64_t heads, int64_t b, int64_t h) {
  for (int64_t t = 0; t < s.T; ++t) {
    const float* src = x + ((b * s.T + t) * heads + h) * s.K;
    for (int64_t d = 0; d < s.K; ++d) dst[d * s.Tp + t] = src[d];
  }
}

void unpack_rows(float* x, const float* src, const Dims& s, int64_t heads, int64_t b, int64_t h, float mul) {
  for (int64_t t = 0; t < s.T; ++t) {
    float* out = x + ((b * s.T + t) * heads + h) * s.K;
    for (int64_t d = 0; d < s.K; ++d) out[d] = src[t * s.Kp + d] * mul;
  }
}

// Runs fn(0..n-1) on the caller and up to (pool threads) helpers. Helpers that start after all
// items are claimed return at once, so the caller only waits for items actually in flight.
void parallel_for(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, busy{0};
  };
  auto st = std::make_shared<State>();
  const std::function<void(int64_t)>* f = &fn;
  auto work = [st, f, n]() {
    for (;;) {
      st->busy.fetch_add(1);
      int64_t i = st->next.fetch_add(1);
      if (i >= n) { st->busy.fetch_sub(1); return; }
      (*f)(i);
      st->busy.fetch_sub(1);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) { auto task = work; pool.Schedule(std::move(task)); }
  work();
  while (st->busy.load() != 0) std::this_thread::yield();
}

// Scales the first n floats of x (a multiple of W) by c.
inline void scale_row(float* x, int64_t n, float c) {
  for (int64_t j = 0; j < n; j += W) store(x + j, load(x + j) * c);
}

// Columns of key tile j0 below query t's lo (padded rows t >= T: none).
inline int64_t below(const int32_t* lo, const Dims& s, int64_t b, int64_t t, int64_t j0) {
  return t < s.T ? std::min<int64_t>(BK, std::max<int64_t>(0, lo[b * s.T + t] - j0)) : 0;
}

void forward_head(const Dims& s, float scale, const float* q, const float* k, const float* v,
                  float* o, float* lse, int64_t b, int64_t h, const int32_t* lo) {
  const int64_t Kp = s.Kp, Tp = s.Tp, g = h / (s.H / s.G);
  Buf Q(Tp * Kp), Kt(Kp * Tp), V(Tp * Kp), O(Tp * Kp), S(BQ * BK);
  pack_rows(Q.p, q, s, s.H, b, h, scale);
  pack_cols(Kt.p, k, s, s.G, b, g);
  pack_rows(V.p, v, s, s.G, b, g, 1.0f);
  float m[BQ], l[BQ];
  for (int64_t i0 = 0; i0 < Tp; i0 += BQ) {
    std::fill(m, m + BQ, -INFINITY);
    std::fill(l, l + BQ, 0.0f);
    float* acc = O.p + i0 * Kp;
    for (int64_t j0 = lo[b * s.T + i0] / BK * BK; j0 <= i0; j0 += BK) {
      gemm<false>(S.p, BK, Q.p + i0 * Kp, Kp, 1, Kt.p + j0, Tp, BQ, BK, Kp);  // S = Q K^T
      const bool diag = j0 == i0;
      for (int64_t r = 0; r < BQ; ++r) {
        float* row = S.p + r * BK;
        const int64_t n = below(lo, s, b, i0 + r, j0);
        if (n == BK) { std::fill(row, row + BK, 0.0f); continue; }  // no weight, no rescale
        std::fill(row, row + n, -INFINITY);
        if (diag) for (int64_t c = r + 1; c < BK; ++c) row[c] = -INFINITY;
        vf x[NV];
        float mx = -INFINITY;
        for (int j = 0; j < NV; ++j) { x[j] = load(row + W * j); mx = std::max(mx, hmax(x[j])); }
        const float mnew = std::max(m[r], mx), alpha = std::exp(m[r] - mnew);
        for (int j = 0; j < NV; ++j) store(row + W * j, vexp(x[j] - mnew));
        std::fill(row, row + n, 0.0f);
        if (diag) for (int64_t c = r + 1; c < BK; ++c) row[c] = 0.0f;
        vf sum = {};
        for (int j = 0; j < NV; ++j) sum += load(row + W * j);
        l[r] = l[r] * alpha + hsum(sum);
        m[r] = mnew;
        if (alpha != 1.0f) scale_row(acc + r * Kp, Kp, alpha);
      }
      gemm<true>(acc, Kp, S.p, BK, 1, V.p + j0 * Kp, Kp, BQ, Kp, BK);  // O += P V
    }
    for (int64_t r = 0; r < BQ && i0 + r < s.T; ++r) {
      scale_row(acc + r * Kp, Kp, 1.0f / l[r]);
      lse[(b * s.H + h) * s.T + i0 + r] = m[r] + std::log(l[r]);
    }
  }
  unpack_rows(o, O.p, s, s.H, b, h, 1.0f);
}

void backward_group(const Dims& s, float scale, const float* q, const float* k, const float* v,
                    const float* o, const float* lse, const float* dout, float* dq, float* dk,
                    float* dv, int64_t b, int64_t g, const int32_t* lo) {
  const int64_t Kp = s.Kp, Tp = s.Tp, R = s.H / s.G;
  Buf Kt(Kp * Tp), Kr(Tp * Kp), Vt(Kp * Tp), Q(Tp * Kp), dO(Tp * Kp), Ob(Tp * Kp), dQ(Tp * Kp),
      dK(Tp * Kp), dV(Tp * Kp), P(BQ * BK), dS(BQ * BK), L(Tp), D(Tp);
  pack_cols(Kt.p, k, s, s.G, b, g);
  pack_rows(Kr.p, k, s, s.G, b, g, 1.0f);
  pack_cols(Vt.p, v, s, s.G, b, g);
  for (int64_t hr = 0; hr < R; ++hr) {
    const int64_t h = g * R + hr;
    pack_rows(Q.p, q, s, s.H, b, h, scale);
    pack_rows(dO.p, dout, s, s.H, b, h, 1.0f);
    pack_rows(Ob.p, o, s, s.H, b, h, 1.0f);
    std::memset(dQ.p, 0, Tp * Kp * 4);
    for (int64_t t = 0; t < s.T; ++t) {  // padded rows keep L = D = 0 and dO = 0: no gradient
      L.p[t] = lse[(b * s.H + h) * s.T + t];
      vf acc = {};
      for (int64_t j = 0; j < Kp; j += W) acc += load(dO.p + t * Kp + j) * load(Ob.p + t * Kp + j);
      D.p[t] = hsum(acc);
    }
    for (int64_t i0 = 0; i0 < Tp; i0 += BQ) {
      for (int64_t j0 = lo[b * s.T + i0] / BK * BK; j0 <= i0; j0 += BK) {
        gemm<false>(P.p, BK, Q.p + i0 * Kp, Kp, 1, Kt.p + j0, Tp, BQ, BK, Kp);    // S = Q K^T
        gemm<false>(dS.p, BK, dO.p + i0 * Kp, Kp, 1, Vt.p + j0, Tp, BQ, BK, Kp);  // dP = dO V^T
        const bool diag = j0 == i0;
        for (int64_t r = 0; r < BQ; ++r) {
          const float lr = L.p[i0 + r], dr = D.p[i0 + r];
          for (int j = 0; j < NV; ++j) {
            vf p = vexp(load(P.p + r * BK + W * j) - lr);
            store(P.p + r * BK + W * j, p);
            store(dS.p + r * BK + W * j, p * (load(dS.p + r * BK + W * j) - dr));
          }
          if (diag) for (int64_t c = r + 1; c < BK; ++c) { P.p[r * BK + c] = 0.0f; dS.p[r * BK + c] = 0.0f; }
          const int64_t n = below(lo, s, b, i0 + r, j0);
          std::fill(P.p + r * BK, P.p + r * BK + n, 0.0f);
          std::fill(dS.p + r * BK, dS.p + r * BK + n, 0.0f);
        }
        gemm<true>(dV.p + j0 * Kp, Kp, P.p, 1, BK, dO.p + i0 * Kp, Kp, BK, Kp, BQ);   // dV += P^T dO
        gemm<true>(dK.p + j0 * Kp, Kp, dS.p, 1, BK, Q.p + i0 * Kp, Kp, BK, Kp, BQ);   // dK += dS^T Q
        gemm<true>(dQ.p + i0 * Kp, Kp, dS.p, BK, 1, Kr.p + j0 * Kp, Kp, BQ, Kp, BK);  // dQ += dS K
      }
    }
    unpack_rows(dq, dQ.p, s, s.H, b, h, scale);
  }
  unpack_rows(dk, dK.p, s, s.G, b, g, 1.0f);
  unpack_rows(dv, dV.p, s, s.G, b, g, 1.0f);
}

ffi::Error check(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                 const ffi::Buffer<ffi::F32>& v, Dims* s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("attention: q, k, v must be (B, T, heads, head_dim)");
  s->B = qd[0]; s->T = qd[1]; s->H = qd[2]; s->K = qd[3]; s->G = kd[2];
  for (int i : {0, 1, 3})
    if (kd[i] != qd[i] || vd[i] != qd[i])
      return ffi::Error::InvalidArgument("attention: k/v batch, length or head_dim differ from q");
  if (vd[2] != s->G || s->G == 0 || s->H % s->G != 0)
    return ffi::Error::InvalidArgument("attention: query heads must be a multiple of kv heads");
  s->Kp = (s->K + TILE_V * W - 1) / (TILE_V * W) * (TILE_V * W);
  s->Tp = (s->T + BQ - 1) / BQ * BQ;
  return ffi::Error::Success();
}

ffi::Error attention_fwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> lo, ffi::ResultBuffer<ffi::F32> o,
                         ffi::ResultBuffer<ffi::F32> lse, float scale) {
  Dims s;
  if (auto err = check(q, k, v, &s); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  parallel_for(pool, s.B * s.H, [&](int64_t i) {
    forward_head(s, scale, qp, kp, vp, op, lp, i / s.H, i % s.H, lo.typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error attention_bwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> o,
                         ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, ffi::Buffer<ffi::S32> lo,
                         ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                         ffi::ResultBuffer<ffi::F32> dv, float scale) {
  Dims s;
  if (auto err = check(q, k, v, &s); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = o.typed_data(), *lp = lse.typed_data(), *dop = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_for(pool, s.B * s.G, [&](int64_t i) {
    backward_group(s, scale, qp, kp, vp, op, lp, dop, dqp, dkp, dvp, i / s.G, i % s.G, lo.typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgolfCausalAttentionFwd, attention_fwd,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()  // q, k, v
                                  .Arg<ffi::Buffer<ffi::S32>>()      // lo
                                  .Ret<F32>().Ret<F32>()             // o, lse
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgolfCausalAttentionBwd, attention_bwd,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()  // q, k, v
                                  .Arg<F32>().Arg<F32>().Arg<F32>()  // o, lse, do
                                  .Arg<ffi::Buffer<ffi::S32>>()      // lo
                                  .Ret<F32>().Ret<F32>().Ret<F32>()  // dq, dk, dv
                                  .Attr<float>("scale"));
