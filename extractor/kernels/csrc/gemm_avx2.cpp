// AVX2 path. A 256-bit vector holds word k of 4 output channels. popcount per byte by nibble
// lookup (vpshufb, Mula's method), using lo(a ^ w) = lo(a) ^ lo(w) and hi(a ^ w) = hi(a) ^ hi(w):
// weights are stored nibble-split once (`prepare_weights`) and each input word is split once per
// call into `scratch`, so the inner step is XOR, vpshufb, add per nibble half with no shifts.
// Byte counters are widened with vpsadbw every <= 31 words (31 * 8 = 248 fits a byte); vpsadbw
// leaves one count per 64-bit lane, i.e. per output channel: no horizontal reduction.
#include "bitgemm.h"

#ifndef HEADHUB_AVX2_MR
#define HEADHUB_AVX2_MR 3
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
namespace headhub::isa_avx2 {
namespace {

constexpr uint64_t kLow4 = 0x0f0f0f0f0f0f0f0full;

// As: rows of 2 * Kw words, (lo, hi) nibbles of each input word. Bg: per k, 16 words:
// lo nibbles of the 8 outputs' word k, then hi nibbles.
template <int MR>
inline void block(const uint64_t* As, int64_t lds, const uint64_t* Bg, int64_t Kw, int32_t* C,
                  int64_t ldc) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i zero = _mm256_setzero_si256();
  __m256i tot[MR][2];
  for (int i = 0; i < MR; ++i) tot[i][0] = tot[i][1] = zero;
  for (int64_t k = 0; k < Kw;) {
    const int64_t kend = (Kw - k > 31) ? k + 31 : Kw;
    __m256i acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = zero;
    for (; k < kend; ++k) {
      const __m256i* w = reinterpret_cast<const __m256i*>(Bg + k * 2 * kGroup);
      const __m256i wl0 = _mm256_loadu_si256(w), wl1 = _mm256_loadu_si256(w + 1);
      const __m256i wh0 = _mm256_loadu_si256(w + 2), wh1 = _mm256_loadu_si256(w + 3);
      for (int i = 0; i < MR; ++i) {
        const __m256i al = _mm256_set1_epi64x(static_cast<long long>(As[i * lds + 2 * k]));
        const __m256i ah = _mm256_set1_epi64x(static_cast<long long>(As[i * lds + 2 * k + 1]));
        acc[i][0] = _mm256_add_epi8(acc[i][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(al, wl0)));
        acc[i][1] = _mm256_add_epi8(acc[i][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(al, wl1)));
        acc[i][0] = _mm256_add_epi8(acc[i][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(ah, wh0)));
        acc[i][1] = _mm256_add_epi8(acc[i][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(ah, wh1)));
      }
    }
    for (int i = 0; i < MR; ++i) {
      tot[i][0] = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(acc[i][0], zero));
      tot[i][1] = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(acc[i][1], zero));
    }
  }
  // 64-bit lane counts (< 2^31) -> 8 int32: the low dword of each lane
  const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int i = 0; i < MR; ++i) {
    const __m256i lo = _mm256_permutevar8x32_epi32(tot[i][0], pick);
    const __m256i hi = _mm256_permutevar8x32_epi32(tot[i][1], pick);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + i * ldc), _mm256_permute2x128_si256(lo, hi, 0x20));
  }
}

}  // namespace

HEADHUB_GEMM_DECL {
  constexpr int MR = HEADHUB_AVX2_MR;
  const int64_t lds = 2 * Kw;
  for (int64_t r = 0; r < R; ++r)  // split each input word into its nibbles once per call
    for (int64_t k = 0; k < Kw; ++k) {
      const uint64_t a = A[r * lda + k];
      scratch[r * lds + 2 * k] = a & kLow4;
      scratch[r * lds + 2 * k + 1] = (a >> 4) & kLow4;
    }
  for (int64_t g = 0; g < G; ++g) {
    const uint64_t* Bg = Bi + g * Kw * 2 * kGroup;
    int64_t r = 0;
    for (; r + MR <= R; r += MR) block<MR>(scratch + r * lds, lds, Bg, Kw, C + r * ldc + g * kGroup, ldc);
    for (; r < R; ++r) block<1>(scratch + r * lds, lds, Bg, Kw, C + r * ldc + g * kGroup, ldc);
  }
}

}  // namespace headhub::isa_avx2
#pragma GCC pop_options
#else
namespace headhub::isa_avx2 {
HEADHUB_GEMM_DECL { isa_generic::gemm(A, R, lda, Bi, G, Kw, C, ldc, scratch); }
}  // namespace headhub::isa_avx2
#endif
