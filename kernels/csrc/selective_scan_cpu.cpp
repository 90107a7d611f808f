// Selective scan core for the CPU: h[t] = exp(dt[t] * A) * h[t-1] + dt[t] * u[t] * B[t], y[t] = <C[t], h[t]>,
// forward and backward, for float and double. Built at first use by kernels/_cpu_build.py (g++ -O3
// -march=native -fopenmp) and called through ctypes with raw pointers to contiguous tensors.
//
// Layout: u, dt, y, du, ddt [Bs, D, L]; A [D, N] pre-scaled by log2(e) (so exp(dt * A) = 2 ** (dt * A2));
// Bm, Cm, dB, dC [Bs, G, L, N] (positions before states, so the inner loop over N reads contiguous memory);
// h_last, dh_last [Bs, D, N]; dA [Bs, D, N] (one slice per batch row, summed by the caller).
//
// One (batch row, channel) pair owns its state in a small array and walks the sequence, as mamba_ssm's CUDA
// kernel does with its registers; the loop over the N states is the one the compiler vectorizes. The backward
// replays the forward of its channel into a per-thread buffer (decays and states, 2 L N values) instead of
// saving anything in the forward, then runs the adjoint recurrence right to left.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// 2 ** x, vectorizable: x = n + f with n an integer and |f| <= 1/2, 2 ** f from its Taylor series in f ln 2
// (to degree 7 for float, 13 for double: below one rounding of the type), 2 ** n written into the exponent
// bits. x is clamped so that n stays a normal exponent; below the clamp the true value is under 2 ** -125
// (float) or 2 ** -1021 (double), which a decay treats as zero. n comes from truncating x + 1/2 shifted to be
// positive (truncation is floor there): float-to-int truncation vectorizes, floor does not.
template <typename T>
struct Exp2Format;
template <>
struct Exp2Format<float> {
    using Bits = int32_t;
    static constexpr int degree = 7, bias = 127, mantissa = 23;
};
template <>
struct Exp2Format<double> {
    using Bits = int64_t;
    static constexpr int degree = 13, bias = 1023, mantissa = 52;
};

// 1 / j! for j = 0..degree, computed by the compiler
template <typename T>
struct TaylorOfExp {
    static constexpr int degree = Exp2Format<T>::degree;
    static constexpr std::array<T, degree + 1> coef = [] {
        std::array<T, degree + 1> c{};
        c[0] = T(1);
        for (int j = 1; j <= degree; ++j) c[j] = c[j - 1] / T(j);
        return c;
    }();
};

template <typename T>
inline T exp2_approx(T x) {
    using F = Exp2Format<T>;
    const T lo = T(2 - F::bias), hi = T(F::bias);
    x = x < lo ? lo : (x > hi ? hi : x);
    const int32_t k = static_cast<int32_t>(x + T(F::bias + 1.5));  // n + bias + 1
    const T f = (x - static_cast<T>(k - F::bias - 1)) * T(0.693147180559945309417232121458);
    using E = TaylorOfExp<T>;
    T p = E::coef[F::degree];
    for (int j = F::degree - 1; j >= 0; --j) p = p * f + E::coef[j];
    const typename F::Bits bits = static_cast<typename F::Bits>(k - 1) << F::mantissa;  // (n + bias) << mantissa
    T scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

template <typename T>
void scan_fwd(const T* u, const T* dt, const T* A2, const T* Bm, const T* Cm, T* y, T* h_last, int64_t Bs,
              int64_t D, int64_t L, int64_t N, int64_t G, int threads) {
    const int64_t Dg = D / G;
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> h(N);
#pragma omp for schedule(static)
        for (int64_t bd = 0; bd < Bs * D; ++bd) {
            const int64_t b = bd / D, d = bd % D, g = d / Dg;
            const T* ub = u + bd * L;
            const T* dtb = dt + bd * L;
            const T* Ad = A2 + d * N;
            const T* Bb = Bm + (b * G + g) * L * N;
            const T* Cb = Cm + (b * G + g) * L * N;
            T* yb = y + bd * L;
            T* hp = h.data();
            for (int64_t n = 0; n < N; ++n) hp[n] = T(0);
            for (int64_t t = 0; t < L; ++t) {
                const T s = dtb[t], x = s * ub[t];
                const T* Bt = Bb + t * N;
                const T* Ct = Cb + t * N;
                T acc = T(0);
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < N; ++n) {
                    const T hn = exp2_approx(s * Ad[n]) * hp[n] + x * Bt[n];
                    hp[n] = hn;
                    acc += Ct[n] * hn;
                }
                yb[t] = acc;
            }
            std::memcpy(h_last + bd * N, hp, sizeof(T) * N);
        }
    }
}

// Work unit of the backward: one batch row, one group, one slice [d0, d1) of the group's channels. Units that
// share (b, g) write their dB, dC into separate slices (``parts`` of them, summed by the caller), so no two
// threads add into the same element; dA has one slice per batch row for the same reason.
template <typename T>
void scan_bwd(const T* u, const T* dt, const T* A, const T* A2, const T* Bm, const T* Cm, const T* dy,
              const T* dh_last, T* du, T* ddt, T* dA, T* dB, T* dC, int64_t Bs, int64_t D, int64_t L, int64_t N,
              int64_t G, int64_t parts, int threads) {
    const int64_t Dg = D / G;
    const int64_t per_part = (Dg + parts - 1) / parts;
    const int64_t units = Bs * G * parts;
    const int64_t LN = L * N;
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> hs(LN), as(LN), carry(N), zeros(N, T(0));
#pragma omp for schedule(dynamic, 1)
        for (int64_t unit = 0; unit < units; ++unit) {
            const int64_t part = unit % parts, bg = unit / parts, b = bg / G, g = bg % G;
            const int64_t d0 = g * Dg + part * per_part;
            const int64_t d1 = std::min(g * Dg + Dg, d0 + per_part);
            const T* Bb = Bm + bg * LN;
            const T* Cb = Cm + bg * LN;
            T* dBb = dB + (part * Bs * G + bg) * LN;
            T* dCb = dC + (part * Bs * G + bg) * LN;
            for (int64_t i = 0; i < LN; ++i) dBb[i] = dCb[i] = T(0);
            T* H = hs.data();
            T* Adec = as.data();
            T* q = carry.data();
            for (int64_t d = d0; d < d1; ++d) {
                const int64_t bd = b * D + d;
                const T* ub = u + bd * L;
                const T* dtb = dt + bd * L;
                const T* dyb = dy + bd * L;
                const T* Ad = A + d * N;
                const T* A2d = A2 + d * N;
                T* dAd = dA + bd * N;
                // replay: decays and states of every position
                for (int64_t t = 0; t < L; ++t) {
                    const T s = dtb[t], x = s * ub[t];
                    const T* Bt = Bb + t * N;
                    const T* hprev = t > 0 ? H + (t - 1) * N : zeros.data();
                    T* Ht = H + t * N;
                    T* at = Adec + t * N;
#pragma omp simd
                    for (int64_t n = 0; n < N; ++n) {
                        const T a = exp2_approx(s * A2d[n]);
                        at[n] = a;
                        Ht[n] = a * hprev[n] + x * Bt[n];
                    }
                }
                // adjoint, right to left: q = d loss / d h[t] from positions after t (a[t+1] * g[t+1])
                if (dh_last) {
                    std::memcpy(q, dh_last + bd * N, sizeof(T) * N);
                } else {
                    for (int64_t n = 0; n < N; ++n) q[n] = T(0);
                }
                for (int64_t t = L - 1; t >= 0; --t) {
                    const T s = dtb[t], x = s * ub[t], dyt = dyb[t];
                    const T* Bt = Bb + t * N;
                    const T* Ct = Cb + t * N;
                    const T* Ht = H + t * N;
                    const T* at = Adec + t * N;
                    const T* hprev = t > 0 ? H + (t - 1) * N : zeros.data();
                    T* dBt = dBb + t * N;
                    T* dCt = dCb + t * N;
                    T dx = T(0), dlog_sum = T(0);
#pragma omp simd reduction(+ : dx, dlog_sum)
                    for (int64_t n = 0; n < N; ++n) {
                        const T gn = q[n] + dyt * Ct[n];  // d loss / d h[t]
                        dCt[n] += dyt * Ht[n];
                        dBt[n] += gn * x;
                        dx += gn * Bt[n];
                        // d loss / d (dt[t] A[n]) = g a[t] h[t-1]: from the states, never h[t] - b[t], which
                        // cancels when the decay is near zero
                        const T dlog = gn * at[n] * hprev[n];
                        dAd[n] += dlog * s;
                        dlog_sum += dlog * Ad[n];
                        q[n] = at[n] * gn;
                    }
                    du[bd * L + t] = dx * s;
                    ddt[bd * L + t] = dlog_sum + dx * ub[t];
                }
            }
        }
    }
}

}  // namespace

extern "C" {

void mmseq_scan_fwd_f32(const float* u, const float* dt, const float* A2, const float* Bm, const float* Cm, float* y,
                        float* h_last, int64_t Bs, int64_t D, int64_t L, int64_t N, int64_t G, int threads) {
    scan_fwd<float>(u, dt, A2, Bm, Cm, y, h_last, Bs, D, L, N, G, threads);
}

void mmseq_scan_fwd_f64(const double* u, const double* dt, const double* A2, const double* Bm, const double* Cm,
                        double* y, double* h_last, int64_t Bs, int64_t D, int64_t L, int64_t N, int64_t G,
                        int threads) {
    scan_fwd<double>(u, dt, A2, Bm, Cm, y, h_last, Bs, D, L, N, G, threads);
}

void mmseq_scan_bwd_f32(const float* u, const float* dt, const float* A, const float* A2, const float* Bm,
                        const float* Cm, const float* dy, const float* dh_last, float* du, float* ddt, float* dA,
                        float* dB, float* dC, int64_t Bs, int64_t D, int64_t L, int64_t N, int64_t G, int64_t parts,
                        int threads) {
    scan_bwd<float>(u, dt, A, A2, Bm, Cm, dy, dh_last, du, ddt, dA, dB, dC, Bs, D, L, N, G, parts, threads);
}

void mmseq_scan_bwd_f64(const double* u, const double* dt, const double* A, const double* A2, const double* Bm,
                        const double* Cm, const double* dy, const double* dh_last, double* du, double* ddt,
                        double* dA, double* dB, double* dC, int64_t Bs, int64_t D, int64_t L, int64_t N, int64_t G,
                        int64_t parts, int threads) {
    scan_bwd<double>(u, dt, A, A2, Bm, Cm, dy, dh_last, du, ddt, dA, dB, dC, Bs, D, L, N, G, parts, threads);
}

}  // extern "C"
