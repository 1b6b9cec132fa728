// Layout ops around the binary kernels: sign packing of float activations into channel words, and
// average pooling with ATen's arithmetic into the NCHW layout the real convs expect.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace headhub {
namespace {

// ---- packing -------------------------------------------------------------------------------

// out[n, h, w, q] bit j = (x[n, h, w, 64q + j] + t[64q + j]) >= 0; bits past C are 0. x is an
// NHWC-ordered view with any element strides, so channels-last (sc = 1) and NCHW tensors both work.
#if defined(__x86_64__) && defined(__GNUC__)
// 64 channels -> one word: 8 compares of 8 lanes, movemask. (x + t) >= 0 with an ordered compare
// is false for NaN, like the scalar `>=` and torch's `x >= 0`.
__attribute__((target("avx2"))) void pack_row_avx2(const float* row, const float* t, int64_t C,
                                                   uint64_t* o) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    uint64_t bits = 0;
    const int64_t n = std::min<int64_t>(64, C - c0);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 v = _mm256_loadu_ps(row + c0 + j);
      if (t) v = _mm256_add_ps(v, _mm256_loadu_ps(t + c0 + j));
      const uint64_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)));
      bits |= m << j;
    }
    for (; j < n; ++j) {
      const float v = t ? row[c0 + j] + t[c0 + j] : row[c0 + j];
      bits |= uint64_t(v >= 0.0f) << j;
    }
    o[c0 / 64] = bits;
  }
}
const bool g_pack_avx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}();
#else
const bool g_pack_avx2 = false;
void pack_row_avx2(const float*, const float*, int64_t, uint64_t*) {}
#endif

// NCHW-contiguous input (the output of a real conv): walk each channel's plane in memory order
// and set that channel's bit in every pixel's word, instead of gathering C strided floats per
// pixel (one cache line per channel per pixel).
void pack_planes(const float* x, const int64_t* shape, const int64_t* st, const float* t,
                 uint64_t* out, int nt) {
  const int64_t N = shape[0], HW = shape[1] * shape[2], C = shape[3], Cw = (C + 63) / 64;
#pragma omp parallel num_threads(nt) if (N * HW * C > 65536)
  {
  PhaseClock clock;
#pragma omp for schedule(static) collapse(2) nowait
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < Cw; ++q) {
      uint64_t* o = out + n * HW * Cw + q;
      for (int64_t p = 0; p < HW; ++p) o[p * Cw] = 0;
      for (int64_t c = q * 64; c < std::min(C, q * 64 + 64); ++c) {
        const float* plane = x + n * st[0] + c * st[3];
        const float tc = t ? t[c] : 0.0f;
        const int bit = static_cast<int>(c - q * 64);
        if (t) {
          for (int64_t p = 0; p < HW; ++p) o[p * Cw] |= uint64_t((plane[p] + tc) >= 0.0f) << bit;
        } else {
          for (int64_t p = 0; p < HW; ++p) o[p * Cw] |= uint64_t(plane[p] >= 0.0f) << bit;
        }
      }
    }
  clock.lap(kPack);
  }
}

void pack_nhwc(const float* x, const int64_t* shape, const int64_t* st, const float* t,
               uint64_t* out, int nt) {
  const int64_t N = shape[0], H = shape[1], W = shape[2], C = shape[3], Cw = (C + 63) / 64;
  const int64_t M = N * H * W, sc = st[3];
  if (st[2] == 1 && st[1] == W && sc == H * W) return pack_planes(x, shape, st, t, out, nt);
#pragma omp parallel num_threads(nt) if (M * C > 65536)
  {
  PhaseClock clock;
#pragma omp for schedule(static) nowait
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = m / (H * W), h = (m / W) % H, w = m % W;
    const float* row = x + n * st[0] + h * st[1] + w * st[2];
    uint64_t* o = out + m * Cw;
    if (sc == 1 && g_pack_avx2) {
      pack_row_avx2(row, t, C, o);
      continue;
    }
    for (int64_t q = 0; q < Cw; ++q) {
      const int64_t c0 = q * 64, c1 = std::min(C, c0 + 64);
      uint64_t bits = 0;
      if (sc == 1 && t) {
        for (int64_t c = c0; c < c1; ++c) bits |= uint64_t((row[c] + t[c]) >= 0.0f) << (c - c0);
      } else if (sc == 1) {
        for (int64_t c = c0; c < c1; ++c) bits |= uint64_t(row[c] >= 0.0f) << (c - c0);
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          const float v = t ? row[c * sc] + t[c] : row[c * sc];
          bits |= uint64_t(v >= 0.0f) << (c - c0);
        }
      }
      o[q] = bits;
    }
  }
  clock.lap(kPack);
  }
}

// ---- NCHW -> channels-last copy + packing -------------------------------------------------------

// The first Bi-Real block of a stage gets the NCHW output of a real conv; it needs the sign bits
// of x and, in its epilogue, x itself as the residual, one output pixel (row of channels) at a
// time. One pass over x writes both: tiles of 16 pixels x 16 channels are transposed in
// registers, stored as channels-last rows and compared to give 16 sign bits per pixel. Reading
// NCHW per pixel instead costs a cache line per channel, in packing and again in the epilogue.
// Pixels [p0, p0 + P) of one image; planes of HW floats, C channels; copy rows of C floats.
void transpose_pack_tile_scalar(const float* x, int64_t HW, int64_t C, int64_t P, const float* t,
                                float* copy, uint64_t* bits) {
  const int64_t Cw = (C + 63) / 64;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < P; ++k) copy[k * C + c] = x[c * HW + k];
  for (int64_t k = 0; k < P; ++k)
    for (int64_t q = 0; q < Cw; ++q) {
      uint64_t w = 0;
      for (int64_t c = q * 64; c < std::min(C, q * 64 + 64); ++c) {
        const float v = t ? copy[k * C + c] + t[c] : copy[k * C + c];
        w |= uint64_t(v >= 0.0f) << (c - q * 64);
      }
      bits[k * Cw + q] = w;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's AVX-512 intrinsics pass undefined vectors as merge sources and then warn under -O3.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// r[i] = row i of a 16x16 tile -> r[j] = column j (unpack, in-lane shuffle, two lane shuffles).
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 u[16];
  for (int i = 0; i < 16; i += 2) {
    u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // r[g + j], 128-bit lane L: rows g..g+3 of column 4L + j
    r[g + 0] = _mm512_shuffle_ps(u[g], u[g + 2], 0x44);
    r[g + 1] = _mm512_shuffle_ps(u[g], u[g + 2], 0xEE);
    r[g + 2] = _mm512_shuffle_ps(u[g + 1], u[g + 3], 0x44);
    r[g + 3] = _mm512_shuffle_ps(u[g + 1], u[g + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 a0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    const __m512 a1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 b0 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 b1 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    u[j] = _mm512_shuffle_f32x4(a0, b0, 0x88);
    u[4 + j] = _mm512_shuffle_f32x4(a1, b1, 0x88);
    u[8 + j] = _mm512_shuffle_f32x4(a0, b0, 0xDD);
    u[12 + j] = _mm512_shuffle_f32x4(a1, b1, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = u[i];
}

// C a multiple of 16, 1 <= P <= 16. (x + t) >= 0 as an ordered compare, as in pack_row_avx2.
__attribute__((target("avx512f"))) void transpose_pack_tile_avx512(const float* x, int64_t HW,
                                                                   int64_t C, int64_t P,
                                                                   const float* t, float* copy,
                                                                   uint64_t* bits) {
  const int64_t Cw = (C + 63) / 64;
  const __mmask16 pm = static_cast<__mmask16>((1u << P) - 1);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t q = 0; q < Cw; ++q) {
    uint64_t w[16] = {0};
    for (int64_t c0 = q * 64; c0 < std::min(C, q * 64 + 64); c0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_maskz_loadu_ps(pm, x + (c0 + i) * HW);
      transpose16(r);
      const __m512 tv = t ? _mm512_loadu_ps(t + c0) : zero;
      for (int64_t k = 0; k < P; ++k) {
        _mm512_storeu_ps(copy + k * C + c0, r[k]);
        const __m512 v = t ? _mm512_add_ps(r[k], tv) : r[k];
        w[k] |= uint64_t(_mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ)) << (c0 - q * 64);
      }
    }
    for (int64_t k = 0; k < P; ++k) bits[k * Cw + q] = w[k];
  }
}
#pragma GCC diagnostic pop

// The same with 8 pixels x 8 channels per tile (C a multiple of 8, 1 <= P <= 8).
__attribute__((target("avx2"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {
    u[g + 0] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

__attribute__((target("avx2"))) void transpose_pack_tile_avx2(const float* x, int64_t HW,
                                                               int64_t C, int64_t P,
                                                               const float* t, float* copy,
                                                               uint64_t* bits) {
  const int64_t Cw = (C + 63) / 64;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i pm = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(P)), lane);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t q = 0; q < Cw; ++q) {
    uint64_t w[8] = {0};
    for (int64_t c0 = q * 64; c0 < std::min(C, q * 64 + 64); c0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(x + (c0 + i) * HW, pm);
      transpose8(r);
      const __m256 tv = t ? _mm256_loadu_ps(t + c0) : zero;
      for (int64_t k = 0; k < P; ++k) {
        _mm256_storeu_ps(copy + k * C + c0, r[k]);
        const __m256 v = t ? _mm256_add_ps(r[k], tv) : r[k];
        const uint64_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)));
        w[k] |= m << (c0 - q * 64);
      }
    }
    for (int64_t k = 0; k < P; ++k) bits[k * Cw + q] = w[k];
  }
}
#else
void transpose_pack_tile_avx512(const float*, int64_t, int64_t, int64_t, const float*, float*,
                                uint64_t*) {}
void transpose_pack_tile_avx2(const float*, int64_t, int64_t, int64_t, const float*, float*,
                              uint64_t*) {}
#endif

// x: N NCHW-contiguous images of C planes of HW floats; copy: (N, HW, C); out: (N, HW, Cw).
void transpose_pack(const float* x, int64_t N, int64_t C, int64_t HW, const float* t, float* copy,
                    uint64_t* out, int nt) {
  // The widest tile the active kernel's instruction set has (`_bitops.set_isa` switches it too,
  // so the tests run every variant on one machine).
  const int level = active_isa_level();
  const bool v512 = level >= 2 && C % 16 == 0, v256 = !v512 && level >= 1 && C % 8 == 0;
  const int64_t tp = v256 ? 8 : 16;  // pixels per tile
  const auto tile_fn = v512   ? transpose_pack_tile_avx512
                       : v256 ? transpose_pack_tile_avx2
                              : transpose_pack_tile_scalar;
  const int64_t Cw = (C + 63) / 64, tiles = (HW + tp - 1) / tp;
#pragma omp parallel num_threads(nt) if (N * HW * C > 65536)
  {
  PhaseClock clock;
#pragma omp for schedule(static) collapse(2) nowait
  for (int64_t n = 0; n < N; ++n)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t p0 = tile * tp, P = std::min<int64_t>(tp, HW - p0);
      tile_fn(x + n * C * HW + p0, HW, C, P, t, copy + (n * HW + p0) * C, out + (n * HW + p0) * Cw);
    }
  clock.lap(kPack);
  }
}

void py_pack(py::array x, py::object threshold, py::array out, int threads, py::object copy) {
  if (x.ndim() != 4 || x.itemsize() != 4 || !py::isinstance<py::array_t<float>>(x))
    throw std::invalid_argument("x: float32 (N, H, W, C) view expected");
  int64_t shape[4], st[4];
  for (int i = 0; i < 4; ++i) {
    shape[i] = x.shape(i);
    if (x.strides(i) % 4 != 0 || x.strides(i) < 0) throw std::invalid_argument("x: strides");
    st[i] = x.strides(i) / 4;
  }
  const float* t = optional_vec<float>(threshold, "threshold", shape[3]);
  uint64_t* op = data_of<uint64_t>(out, "out", 4);
  for (int i = 0; i < 3; ++i)
    if (out.shape(i) != shape[i]) throw std::invalid_argument("out: expected (N, H, W, ceil(C/64))");
  if (out.shape(3) != (shape[3] + 63) / 64) throw std::invalid_argument("out: last dim ceil(C/64)");
  const int nt = threads_for(threads);
  const float* xp = static_cast<const float*>(x.data());
  if (!copy.is_none()) {
    auto ca = copy.cast<py::array>();
    float* cp = data_of<float>(ca, "copy", 4);
    for (int i = 0; i < 4; ++i)
      if (ca.shape(i) != shape[i]) throw std::invalid_argument("copy: expected (N, H, W, C)");
    const int64_t HW = shape[1] * shape[2];
    if (st[3] != HW || st[1] != shape[2] || st[2] != 1 || st[0] != shape[3] * HW)
      throw std::invalid_argument("copy: x must be an NCHW-contiguous tensor viewed as NHWC");
    py::gil_scoped_release nogil;
    return transpose_pack(xp, shape[0], shape[3], HW, t, cp, op, nt);
  }
  py::gil_scoped_release nogil;
  pack_nhwc(xp, shape, st, t, op, nt);
}

// ---- layout --------------------------------------------------------------------------------

// Average pooling without padding (count = valid window elements, i.e. torch's
// count_include_pad=False; ceil_mode windows are clipped), from any NCHW-ordered strided view
// into NCHW-contiguous output. Same arithmetic as ATen's kernels: a float sum from 0 in (ih, iw)
// order, then one division by the count, so the values are identical.
// ATen's PReLU (v > 0 ? v : a * v), both sides computed and selected by a bit mask, so that the
// loops below vectorize instead of branching on the sign of each value.
inline float prelu_of(float v, float a) {
  const uint32_t keep = 0u - static_cast<uint32_t>(v > 0.0f);
  const uint32_t bits = (__builtin_bit_cast(uint32_t, v) & keep) |
                        (__builtin_bit_cast(uint32_t, a * v) & ~keep);
  return __builtin_bit_cast(float, bits);
}

// One output row of 2x2 stride-2 windows from input rows r0, r1 (contiguous), optionally of
// PReLU(x) with weight a: the same (0 + x00 + x01 + x10 + x11) / 4 as ATen, vectorized over ow.
template <bool P>
HEADHUB_CLONES void pool2x2_row(const float* r0, const float* r1, float a, float* o, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float s = 0.0f;
    s += P ? prelu_of(r0[2 * j], a) : r0[2 * j];
    s += P ? prelu_of(r0[2 * j + 1], a) : r0[2 * j + 1];
    s += P ? prelu_of(r1[2 * j], a) : r1[2 * j];
    s += P ? prelu_of(r1[2 * j + 1], a) : r1[2 * j + 1];
    o[j] = s / 4.0f;
  }
}

// sum[c] += PReLU(x[c]) with weights a: both sides computed, then selected (no branch per sign).
HEADHUB_CLONES void add_prelu_row(float* sum, const float* x, const float* a, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    sum[c] += prelu_of(x[c], a[c]);
  }
}

// With `prelu` weights a (one per channel), each input v is first PReLU(v) = v > 0 ? v : a * v,
// ATen's formula (one rounding), so pool(prelu(x)) is computed without writing prelu(x).
void py_avgpool(py::array x, int64_t k, int64_t stride, py::array out, int threads,
                py::object prelu) {
  if (x.ndim() != 4 || x.itemsize() != 4 || !py::isinstance<py::array_t<float>>(x))
    throw std::invalid_argument("x: float32 (N, C, H, W) view expected");
  int64_t st[4];
  for (int i = 0; i < 4; ++i) {
    if (x.strides(i) % 4 != 0 || x.strides(i) < 0) throw std::invalid_argument("x: strides");
    st[i] = x.strides(i) / 4;
  }
  const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  float* op = data_of<float>(out, "out", 4);
  const int64_t Ho = out.shape(2), Wo = out.shape(3);
  if (out.shape(0) != N || out.shape(1) != C || k < 1 || stride < 1 || (Ho - 1) * stride >= H ||
      (Wo - 1) * stride >= W)
    throw std::invalid_argument("out: bad pooled shape");
  const float* a = optional_vec<float>(prelu, "prelu", C);
  const float* xp = static_cast<const float*>(x.data());
  const int nt = threads_for(threads);
  py::gil_scoped_release nogil;
  if (st[1] == 1) {  // channels-last input: sum whole channel rows (vectorizes), scatter to NCHW
#pragma omp parallel num_threads(nt) if (N * C * H * W > 65536)
    {
      std::vector<float> sum(C);
#pragma omp for schedule(static)
      for (int64_t nh = 0; nh < N * Ho; ++nh) {
        const int64_t n = nh / Ho, oh = nh % Ho;
        const int64_t h0 = oh * stride, h1 = std::min(H, h0 + k);
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w0 = ow * stride, w1 = std::min(W, w0 + k);
          const float count = static_cast<float>((h1 - h0) * (w1 - w0));
          float* sp = sum.data();
          for (int64_t c = 0; c < C; ++c) sp[c] = 0.0f;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              const float* px = xp + n * st[0] + ih * st[2] + iw * st[3];
              if (a) {
                add_prelu_row(sp, px, a, C);
              } else {
                for (int64_t c = 0; c < C; ++c) sp[c] += px[c];
              }
            }
          float* o = op + (n * C * Ho + oh) * Wo + ow;
          for (int64_t c = 0; c < C; ++c) o[c * Ho * Wo] = sp[c] / count;
        }
      }
    }
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static) if (N * C * H * W > 65536)
  for (int64_t nc = 0; nc < N * C; ++nc) {  // any other layout: one plane at a time
    const int64_t n = nc / C, c = nc % C;
    const float* base = xp + n * st[0] + c * st[1];
    const float ac = a ? a[c] : 1.0f;
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t h0 = oh * stride, h1 = std::min(H, h0 + k);
      float* o = op + (nc * Ho + oh) * Wo;
      int64_t ow = 0;
      if (k == 2 && stride == 2 && st[3] == 1 && h1 - h0 == 2) {  // whole 2x2 windows, vectorized
        const int64_t full = W / 2;
        if (a) pool2x2_row<true>(base + h0 * st[2], base + (h0 + 1) * st[2], ac, o, full);
        else pool2x2_row<false>(base + h0 * st[2], base + (h0 + 1) * st[2], ac, o, full);
        ow = full;
      }
      for (; ow < Wo; ++ow) {
        const int64_t w0 = ow * stride, w1 = std::min(W, w0 + k);
        float sum = 0.0f;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) {
            const float v = base[ih * st[2] + iw * st[3]];
            sum += a ? prelu_of(v, ac) : v;
          }
        o[ow] = sum / static_cast<float>((h1 - h0) * (w1 - w0));
      }
    }
  }
}

// Max pool on packed sign bits (no padding, floor mode: AlexNet's MaxPool2d(3, 2)). Upstream of a
// monotone sign, max and sign commute: with u = (dot >= T) per pixel, sign(affine(max dot)) is
// OR(u) over the window, XOR the channel's flip bit (a decreasing affine turns max into min).
void py_or_pool(py::array a, int64_t k, int64_t stride, py::object flip, py::array out,
                int threads) {
  const uint64_t* ap = data_of<uint64_t>(a, "a", 4);
  uint64_t* op = data_of<uint64_t>(out, "out", 4);
  const int64_t N = a.shape(0), H = a.shape(1), W = a.shape(2), Cw = a.shape(3);
  const uint64_t* f = optional_vec<uint64_t>(flip, "flip", Cw);
  if (k < 1 || stride < 1 || k > H || k > W) throw std::invalid_argument("bad pooling window");
  const int64_t Ho = (H - k) / stride + 1, Wo = (W - k) / stride + 1;
  if (out.shape(0) != N || out.shape(1) != Ho || out.shape(2) != Wo || out.shape(3) != Cw)
    throw std::invalid_argument("out: expected (N, Ho, Wo, Cw)");
  const int nt = threads_for(threads);
  py::gil_scoped_release nogil;
#pragma omp parallel for num_threads(nt) schedule(static) if (N * Ho * Wo * Cw * k * k > 65536)
  for (int64_t r = 0; r < N * Ho; ++r) {
    const int64_t n = r / Ho, oy = r % Ho;
    for (int64_t ox = 0; ox < Wo; ++ox) {
      uint64_t* o = op + (r * Wo + ox) * Cw;
      for (int64_t q = 0; q < Cw; ++q) o[q] = 0;
      for (int64_t dy = 0; dy < k; ++dy)
        for (int64_t dx = 0; dx < k; ++dx) {
          const uint64_t* src = ap + ((n * H + oy * stride + dy) * W + ox * stride + dx) * Cw;
          for (int64_t q = 0; q < Cw; ++q) o[q] |= src[q];
        }
      if (f)
        for (int64_t q = 0; q < Cw; ++q) o[q] ^= f[q];
    }
  }
}

}  // namespace

void register_layout_ops(py::module_& m) {
  m.def("or_pool", &py_or_pool, py::arg("a"), py::arg("k"), py::arg("stride"), py::arg("flip"),
        py::arg("out"), py::arg("threads"),
        "k x k max pool of packed sign bits (OR over the window, then XOR flip)");
  m.def("pack", &py_pack, py::arg("x"), py::arg("threshold"), py::arg("out"), py::arg("threads"),
        py::arg("copy") = py::none(),
        "sign(x + threshold) bits of an (N, H, W, C) view; with `copy`, x must be NCHW-contiguous "
        "and copy receives it in channels-last order, in the same pass");
  m.def("avgpool", &py_avgpool, py::arg("x"), py::arg("k"), py::arg("stride"), py::arg("out"),
        py::arg("threads"), py::arg("prelu") = py::none(),
        "k x k average pool of x (or of PReLU(x)), no padding, into NCHW-contiguous output");
}

}  // namespace headhub
