// pybind11 module `extractor.kernels._bitops`: binary conv and binary linear as
// XOR-popcount GEMMs on channel-packed 64-bit words, with the folded per-channel affine
// (alpha * BN) and the Bi-Real residual fused into the epilogue.
//
// Float epilogue order is exactly the reference's: y = float(dot); y = y * scale; y = y + bias;
// y = residual + y, each rounded separately (built with -ffp-contract=off, so no FMA), which keeps
// every real value, and so every sign bit of the next layer, identical to the torch path.
#include <algorithm>
#include <ctime>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitgemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include "common.h"

using namespace headhub;  // NOLINT: one module-private translation unit

namespace {

struct Isa {
  const char* name;
  GemmFn gemm;
  int split;  // 2: weights stored nibble-split (AVX2), 1: plain interleaved
  int level;  // active_isa_level(): 2 AVX-512, 1 AVX2, 0 scalar
};

Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq"))
    return {"avx512_vpopcntdq", headhub::isa_avx512::gemm, 1, 2};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
    return {"avx2", headhub::isa_avx2::gemm, 2, 1};
  if (__builtin_cpu_supports("popcnt")) return {"popcnt", headhub::isa_popcnt::gemm, 1, 0};
#endif
  return {"portable", headhub::isa_generic::gemm, 1, 0};
}

Isa g_isa = detect_isa();

}  // namespace

int headhub::active_isa_level() { return g_isa.level; }

namespace {

Isa isa_by_name(const std::string& name) {
  if (name == "avx512_vpopcntdq") return {"avx512_vpopcntdq", headhub::isa_avx512::gemm, 1, 2};
  if (name == "avx2") return {"avx2", headhub::isa_avx2::gemm, 2, 1};
  if (name == "popcnt") return {"popcnt", headhub::isa_popcnt::gemm, 1, 0};
  if (name == "portable") return {"portable", headhub::isa_generic::gemm, 1, 0};
  throw std::invalid_argument("unknown instruction set: " + name);
}

bool cpu_supports(const std::string& name) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (name == "avx512_vpopcntdq")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  if (name == "popcnt") return __builtin_cpu_supports("popcnt");
#endif
  return name == "portable";
}

// ---- weights -------------------------------------------------------------------------------

int64_t prepared_size(int64_t O, int64_t Kw, int split) {
  const int64_t G = (O + headhub::kGroup - 1) / headhub::kGroup;
  return G * Kw * headhub::kGroup * split;
}

// (O, Kw) words -> the active kernel's layout (bitgemm.h): groups of 8 outputs interleaved per
// word, zero rows up to a multiple of 8; AVX2 stores low then high nibbles of each 8-word vector.
py::array_t<uint64_t> py_prepare(py::array w) {
  const uint64_t* wp = data_of<uint64_t>(w, "w", 2);
  const int64_t O = w.shape(0), Kw = w.shape(1), G8 = headhub::kGroup;
  const int split = g_isa.split;
  py::array_t<uint64_t> out(prepared_size(O, Kw, split));
  uint64_t* op = out.mutable_data();
  std::memset(op, 0, out.size() * sizeof(uint64_t));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < Kw; ++k) {
      const uint64_t v = wp[o * Kw + k];
      const int64_t g = o / G8, j = o % G8;
      if (split == 1) {
        op[(g * Kw + k) * G8 + j] = v;
      } else {
        op[(g * Kw + k) * 2 * G8 + j] = v & 0x0f0f0f0f0f0f0f0full;
        op[(g * Kw + k) * 2 * G8 + G8 + j] = (v >> 4) & 0x0f0f0f0f0f0f0f0full;
      }
    }
  return out;
}

const uint64_t* prepared_of(py::array& w, int64_t O, int64_t Kw) {
  const uint64_t* p = data_of<uint64_t>(w, "prepared weights", 1);
  if (w.shape(0) != prepared_size(O, Kw, g_isa.split))
    throw std::invalid_argument("prepared weights do not match the active instruction set; "
                                "call prepare_weights again after set_isa");
  return p;
}

// ---- epilogue ------------------------------------------------------------------------------

struct Epilogue {
  const float* scale;     // (O) or null
  const float* bias;      // (O) or null
  const float* residual;  // (M, O) rows, or a strided (N, Ho, Wo, O) view, or null
  float* out;             // (M, O)
  int64_t O;
  // Element strides of the residual as (N, Ho, Wo, O); rs[3] == 1 reads each row contiguously.
  // Other layouts are gathered row by row (BinaryConvPlan avoids that for a stage's NCHW input
  // by writing a channels-last copy while packing it).
  int64_t rs[4] = {0, 0, 0, 1};
  // Packed output instead of floats (two binary layers in a row, e.g. AlexNet): the next layer's
  // sign bit of output o is (dot >= thr[o]) XOR flip[o], the whole float affine + sign folded
  // into one integer compare (ops.integer_thresholds); rows of `bits_row` bytes, bit o % 8 of
  // byte o / 8, i.e. (N, Ho, Wo, ceil(O/64)) words. Bytes past the last output stay zero.
  const int32_t* thr = nullptr;
  const uint8_t* flip = nullptr;  // byte o / 8, bit o % 8 (flip words); null: none (a pool
                                  // follows, then ops.or_pool flips)
  uint8_t* bits = nullptr;
  int64_t bits_row = 0;
  bool bits_avx2 = false;  // the active ISA has AVX2 (so the tests reach the scalar path too)
};

#if defined(__x86_64__) && defined(__GNUC__)
// 8 outputs -> one byte: dot = kvalid - 2 * cnt, compare with the thresholds, movemask.
__attribute__((target("avx2"))) inline uint32_t threshold_byte_avx2(const int32_t* cnt,
                                                                    int32_t kvalid,
                                                                    const int32_t* thr) {
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cnt));
  const __m256i dot = _mm256_sub_epi32(_mm256_set1_epi32(kvalid), _mm256_add_epi32(c, c));
  const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(thr));
  const __m256i ge = _mm256_cmpgt_epi32(dot, _mm256_sub_epi32(t, _mm256_set1_epi32(1)));
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
}
#else
inline uint32_t threshold_byte_avx2(const int32_t*, int32_t, const int32_t*) { return 0; }
#endif

// Output bits of one row segment [o0, o0 + n), o0 a multiple of 8: whole bytes, so that
// threads writing other segments of the row never share a byte.
void finish_row_bits(const Epilogue& e, int64_t m, int64_t o0, const int32_t* cnt,
                     int32_t kvalid, int64_t n) {
  uint8_t* row = e.bits + m * e.bits_row;
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    uint32_t byte = 0;
    if (e.bits_avx2 && j0 + 8 <= n) {
      byte = threshold_byte_avx2(cnt + j0, kvalid, e.thr + o0 + j0);
    } else {
      for (int64_t j = j0; j < std::min<int64_t>(n, j0 + 8); ++j)
        byte |= uint32_t(kvalid - 2 * cnt[j] >= e.thr[o0 + j]) << (j - j0);
    }
    if (e.flip) byte ^= e.flip[(o0 + j0) / 8];
    row[(o0 + j0) / 8] = static_cast<uint8_t>(byte);
  }
  if (o0 + n == e.O)  // the segment holding the last output clears the row's padding bytes
    for (int64_t b = (e.O + 7) / 8; b < e.bits_row; ++b) row[b] = 0;
}

// One output row segment: y = float(kvalid - 2 * cnt); y = y * scale; y = y + bias; y = res + y.
// Branch-free per element so it vectorizes; the compiler keeps the separate roundings
// (-ffp-contract=off).
template <bool S, bool B, bool R>
__attribute__((always_inline)) inline void finish_row_t(const int32_t* cnt, int32_t kvalid,
                                                        const float* scale, const float* bias,
                                                        const float* res, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float y = static_cast<float>(kvalid - 2 * cnt[j]);
    if (S) y = y * scale[j];
    if (B) y = y + bias[j];
    if (R) y = res[j] + y;
    out[j] = y;
  }
}

// The epilogue runs once per output value, so it is cloned per ISA (HEADHUB_CLONES).

// Border pixel: remove the popcount(0 ^ w) that each zero-padded tap (bit t of pm) added.
HEADHUB_CLONES void drop_padded_taps(int32_t* cnt, uint32_t pm, const int32_t* wpc, int64_t O,
                                     int64_t n) {
  for (uint32_t bits = pm; bits; bits &= bits - 1) {
    const int32_t* wt = wpc + __builtin_ctz(bits) * O;
    for (int64_t j = 0; j < n; ++j) cnt[j] -= wt[j];
  }
}

// `roff`: element offset of output row m's pixel in the residual (its (n, y, x) under rs).
HEADHUB_CLONES void finish_row(const Epilogue& e, int64_t m, int64_t roff, int64_t o0,
                               const int32_t* cnt, int32_t kvalid, int64_t n, float* gather) {
  if (e.bits) return finish_row_bits(e, m, o0, cnt, kvalid, n);
  const float* s = e.scale ? e.scale + o0 : nullptr;
  const float* b = e.bias ? e.bias + o0 : nullptr;
  const float* r = nullptr;
  if (e.residual) {
    r = e.residual + roff + o0 * e.rs[3];
    if (e.rs[3] != 1) {  // strided channels: gather the row once, then the vector path
      for (int64_t j = 0; j < n; ++j) gather[j] = r[j * e.rs[3]];
      r = gather;
    }
  }
  float* out = e.out + m * e.O + o0;
  const int key = (s ? 4 : 0) | (b ? 2 : 0) | (r ? 1 : 0);
  switch (key) {
    case 0: return finish_row_t<false, false, false>(cnt, kvalid, s, b, r, out, n);
    case 1: return finish_row_t<false, false, true>(cnt, kvalid, s, b, r, out, n);
    case 2: return finish_row_t<false, true, false>(cnt, kvalid, s, b, r, out, n);
    case 3: return finish_row_t<false, true, true>(cnt, kvalid, s, b, r, out, n);
    case 4: return finish_row_t<true, false, false>(cnt, kvalid, s, b, r, out, n);
    case 5: return finish_row_t<true, false, true>(cnt, kvalid, s, b, r, out, n);
    case 6: return finish_row_t<true, true, false>(cnt, kvalid, s, b, r, out, n);
    default: return finish_row_t<true, true, true>(cnt, kvalid, s, b, r, out, n);
  }
}

// Split work into row tiles x output-channel chunks (multiples of 8) so both cores have work even
// at batch 1; a tile's im2col rows (TR * Kw words) stay in L1.
void plan(int64_t M, int64_t O, int64_t Kw, int nt, int64_t* TR, int64_t* OC) {
  int64_t tr = std::min<int64_t>(96, 12288 / std::max<int64_t>(8 * Kw, 1));
  tr = std::max<int64_t>(6, tr - tr % 6);  // a multiple of the AVX2 row block (3) and of 2
  const int64_t G8 = headhub::kGroup;
  int64_t oc = (O + G8 - 1) / G8 * G8;
  const int64_t tiles = (M + tr - 1) / tr;
  while (tiles * ((O + oc - 1) / oc) < 4 * nt && oc > 32) oc = (oc / 2 + G8 - 1) / G8 * G8;
  *TR = tr;
  *OC = oc;
}

// Per-thread buffers, reused across calls (allocated once per OpenMP thread).
struct Scratch {
  std::vector<uint64_t> a, split;
  std::vector<uint32_t> mask;
  std::vector<int32_t> cnt;
  std::vector<float> gather;
  std::vector<int64_t> roff;
  void ensure(int64_t TR, int64_t Kw, int64_t OC) {
    if ((int64_t)gather.size() < OC) gather.resize(OC);
    if ((int64_t)roff.size() < TR) roff.resize(TR);
    if ((int64_t)a.size() < TR * Kw) a.resize(TR * Kw);
    if ((int64_t)split.size() < 2 * TR * Kw) split.resize(2 * TR * Kw);
    if ((int64_t)mask.size() < TR) mask.resize(TR);
    if ((int64_t)cnt.size() < TR * OC) cnt.resize(TR * OC);
  }
};
thread_local Scratch t_scratch;

// ---- phase profile -------------------------------------------------------------------------

py::dict py_profile(bool enable) {  // returns the totals so far (ms) and resets them
  py::dict d;
  const char* names[kPhases] = {"pack", "im2col", "popcount_gemm", "epilogue"};
  for (int i = 0; i < kPhases; ++i) d[names[i]] = g_phase_ns[i].exchange(0) / 1e6;
  g_profile = enable;
  return d;
}

// ---- binary conv ---------------------------------------------------------------------------

// Popcount of each weight tap, [tap][output]: a zero (padding) input word contributes
// popcount(0 ^ w), which the conv epilogue removes so that padded taps add exactly 0, as the
// reference's zero padding does. Computed once per weight (ops.PreparedWeight), not per call.
py::array_t<int32_t> py_tap_popcounts(py::array w, int64_t taps) {
  const uint64_t* wp = data_of<uint64_t>(w, "w", 2);
  const int64_t O = w.shape(0), Kw = w.shape(1);
  if (taps < 1 || Kw % taps) throw std::invalid_argument("w: Kw must be a multiple of taps");
  const int64_t Cw = Kw / taps;
  py::array_t<int32_t> out(taps * O);
  int32_t* op = out.mutable_data();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t t = 0; t < taps; ++t) {
      int32_t s = 0;
      for (int64_t q = 0; q < Cw; ++q) s += __builtin_popcountll(wp[o * Kw + t * Cw + q]);
      op[t * O + o] = s;
    }
  return out;
}

// Packed-output mode of an epilogue (see Epilogue::thr): out is (rows..., ceil(O/64)) words.
void set_bits_output(Epilogue& ep, py::array& out, int ndim, const py::object& thr,
                     const py::object& flip) {
  ep.thr = optional_vec<int32_t>(thr, "thresholds", ep.O);
  ep.flip = reinterpret_cast<const uint8_t*>(optional_vec<uint64_t>(flip, "flip", (ep.O + 63) / 64));
  ep.bits = reinterpret_cast<uint8_t*>(data_of<uint64_t>(out, "out", ndim));
  ep.bits_row = out.shape(ndim - 1) * 8;
  ep.bits_avx2 = g_isa.level >= 1;
  if (out.shape(ndim - 1) != (ep.O + 63) / 64)
    throw std::invalid_argument("out: packed output needs ceil(O/64) words per row");
  if (ep.scale || ep.bias || ep.residual)
    throw std::invalid_argument("packed output takes thresholds, not scale/bias/residual");
}

void py_conv(py::array a, py::array w, py::array wprep, py::array tap_pc, int64_t C, int64_t kh,
             int64_t kw, int64_t stride, int64_t pad, py::object scale, py::object bias,
             py::object residual, py::array out, int threads, py::object thr, py::object flip) {
  const uint64_t* ap = data_of<uint64_t>(a, "a", 4);
  data_of<uint64_t>(w, "w", 2);
  const bool packed_out = !thr.is_none();
  float* op = packed_out ? nullptr : data_of<float>(out, "out", 4);
  const int64_t N = a.shape(0), H = a.shape(1), W = a.shape(2), Cw = a.shape(3);
  const int64_t O = w.shape(0), T = kh * kw, Kw = T * Cw;
  if (Cw != (C + 63) / 64 || C <= 0) throw std::invalid_argument("a: last dim must be ceil(C/64)");
  if (w.shape(1) != Kw) throw std::invalid_argument("w: expected (O, kh*kw*ceil(C/64))");
  const uint64_t* bp = prepared_of(wprep, O, Kw);
  const int32_t* wpc = data_of<int32_t>(tap_pc, "tap_pc", 1);
  if (tap_pc.shape(0) != T * O) throw std::invalid_argument("tap_pc: expected kh*kw*O counts");
  if (stride < 1 || pad < 0 || kh < 1 || kw < 1 || T > 32)
    throw std::invalid_argument("bad kernel geometry");
  const int64_t Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1;
  if (Ho < 1 || Wo < 1) throw std::invalid_argument("input smaller than the kernel");
  if (out.shape(0) != N || out.shape(1) != Ho || out.shape(2) != Wo ||
      (!packed_out && out.shape(3) != O))
    throw std::invalid_argument("out: expected (N, Ho, Wo, O)");
  const int64_t M = N * Ho * Wo;
  Epilogue ep{optional_vec<float>(scale, "scale", O), optional_vec<float>(bias, "bias", O),
              nullptr, op, O};
  if (!residual.is_none()) {  // any strides: NHWC rows, or an NCHW tensor viewed as NHWC
    auto r = residual.cast<py::array>();
    const py::ssize_t want[4] = {N, Ho, Wo, O};
    if (r.ndim() != 4 || r.itemsize() != static_cast<py::ssize_t>(sizeof(float)))
      throw std::invalid_argument("residual: expected float32 (N, Ho, Wo, O)");
    for (int i = 0; i < 4; ++i) {
      if (r.shape(i) != want[i]) throw std::invalid_argument("residual: expected (N, Ho, Wo, O)");
      if (r.strides(i) % static_cast<py::ssize_t>(sizeof(float)) || r.strides(i) < 0)
        throw std::invalid_argument("residual: unsupported strides");
      ep.rs[i] = r.strides(i) / static_cast<py::ssize_t>(sizeof(float));
    }
    ep.residual = static_cast<const float*>(r.data());
  }
  if (packed_out) set_bits_output(ep, out, 4, thr, flip);
  const int nt = threads_for(threads);
  const GemmFn gemm = g_isa.gemm;
  py::gil_scoped_release nogil;

  int64_t TR, OC;
  plan(M, O, Kw, nt, &TR, &OC);
  const int64_t tiles = (M + TR - 1) / TR, chunks = (O + OC - 1) / OC;
  const int64_t wstride = Kw * headhub::kGroup * g_isa.split;  // prepared words per 8 outputs

#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t task = 0; task < tiles * chunks; ++task) {
    Scratch& sc = t_scratch;
    sc.ensure(TR, Kw, OC);
    PhaseClock clock;
    const int64_t m0 = (task / chunks) * TR, o0 = (task % chunks) * OC;
    const int64_t R = std::min(TR, M - m0), Oc = std::min(OC, O - o0);
    // im2col of R output pixels, zero words at padding; (n, oy, ox) of row m0 + r stepped along
    int64_t n = m0 / (Ho * Wo), oy = (m0 / Wo) % Ho, ox = m0 % Wo;
    for (int64_t r = 0; r < R; ++r, ++ox) {
      if (ox == Wo) {
        ox = 0;
        if (++oy == Ho) oy = 0, ++n;
      }
      sc.roff[r] = n * ep.rs[0] + oy * ep.rs[1] + ox * ep.rs[2];
      uint32_t pm = 0;
      uint64_t* dst = sc.a.data() + r * Kw;
      const int64_t ix0 = ox * stride - pad;
      const bool cols_inside = ix0 >= 0 && ix0 + kw <= W;
      for (int64_t dy = 0; dy < kh; ++dy) {
        const int64_t iy = oy * stride - pad + dy;
        uint64_t* d = dst + dy * kw * Cw;
        if (cols_inside && iy >= 0 && iy < H) {  // a whole kernel row: kw adjacent NHWC pixels
          const uint64_t* src = ap + ((n * H + iy) * W + ix0) * Cw;
          for (int64_t q = 0; q < kw * Cw; ++q) d[q] = src[q];
          continue;
        }
        for (int64_t dx = 0; dx < kw; ++dx, d += Cw) {
          const int64_t ix = ix0 + dx;
          if (iy < 0 || iy >= H || ix < 0 || ix >= W) {
            for (int64_t q = 0; q < Cw; ++q) d[q] = 0;
            pm |= 1u << (dy * kw + dx);
          } else {
            const uint64_t* src = ap + ((n * H + iy) * W + ix) * Cw;
            for (int64_t q = 0; q < Cw; ++q) d[q] = src[q];
          }
        }
      }
      sc.mask[r] = pm;
    }
    clock.lap(kIm2col);
    const int64_t G = (Oc + headhub::kGroup - 1) / headhub::kGroup;
    gemm(sc.a.data(), R, Kw, bp + (o0 / headhub::kGroup) * wstride, G, Kw, sc.cnt.data(), OC,
         sc.split.data());
    clock.lap(kGemm);
    for (int64_t r = 0; r < R; ++r) {
      const uint32_t pm = sc.mask[r];
      const int32_t kvalid = static_cast<int32_t>(C * (T - __builtin_popcount(pm)));
      int32_t* cr = sc.cnt.data() + r * OC;
      if (pm) drop_padded_taps(cr, pm, wpc + o0, O, Oc);
      finish_row(ep, m0 + r, sc.roff[r], o0, cr, kvalid, Oc, sc.gather.data());
    }
    clock.lap(kEpilogue);
  }
}

// ---- binary linear -------------------------------------------------------------------------

// K: the number of real bits per row; Kw words may hold more (a conv map flattened pixel by pixel
// has ceil(C/64) words per pixel, zero bits past C on both sides).
void py_linear(py::array a, py::array w, py::array wprep, int64_t K, py::object scale,
               py::object bias, py::object residual, py::array out, int threads, py::object thr,
               py::object flip) {
  const uint64_t* ap = data_of<uint64_t>(a, "a", 2);
  data_of<uint64_t>(w, "w", 2);
  const bool packed_out = !thr.is_none();
  float* op = packed_out ? nullptr : data_of<float>(out, "out", 2);
  const int64_t M = a.shape(0), Kw = a.shape(1), O = w.shape(0);
  if (K <= 0 || (K + 63) / 64 > Kw || w.shape(1) != Kw)
    throw std::invalid_argument("a, w: last dim must hold K bits");
  const uint64_t* bp = prepared_of(wprep, O, Kw);
  if (out.shape(0) != M || (!packed_out && out.shape(1) != O))
    throw std::invalid_argument("out: expected (M, O)");
  const float* res = nullptr;
  if (!residual.is_none()) {
    auto r = residual.cast<py::array>();
    res = data_of<float>(r, "residual", 2);
    if (r.size() != M * O) throw std::invalid_argument("residual: expected (M, O)");
  }
  Epilogue ep{optional_vec<float>(scale, "scale", O), optional_vec<float>(bias, "bias", O), res, op, O};
  if (packed_out) set_bits_output(ep, out, 2, thr, flip);
  const int nt = threads_for(threads);
  const GemmFn gemm = g_isa.gemm;
  py::gil_scoped_release nogil;
  int64_t TR, OC;
  plan(M, O, Kw, nt, &TR, &OC);
  const int64_t tiles = (M + TR - 1) / TR, chunks = (O + OC - 1) / OC;
  const int64_t wstride = Kw * headhub::kGroup * g_isa.split;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (M * O * Kw > 4096)
  for (int64_t task = 0; task < tiles * chunks; ++task) {
    Scratch& sc = t_scratch;
    sc.ensure(TR, Kw, OC);
    const int64_t m0 = (task / chunks) * TR, o0 = (task % chunks) * OC;
    const int64_t R = std::min(TR, M - m0), Oc = std::min(OC, O - o0);
    const int64_t G = (Oc + headhub::kGroup - 1) / headhub::kGroup;
    gemm(ap + m0 * Kw, R, Kw, bp + (o0 / headhub::kGroup) * wstride, G, Kw, sc.cnt.data(), OC,
         sc.split.data());
    for (int64_t r = 0; r < R; ++r)
      finish_row(ep, m0 + r, (m0 + r) * O, o0, sc.cnt.data() + r * OC, static_cast<int32_t>(K),
                 Oc, sc.gather.data());
  }
}

// ---- diagnostics ---------------------------------------------------------------------------

// Single-thread XOR-popcount throughput of the active micro-kernel on cache-resident operands, in
// binary multiply-adds per nanosecond of thread CPU time: the ceiling layer timings compare with.
double py_peak(int64_t kw, int64_t rows, int64_t outs, int64_t reps) {
  const int64_t G = (outs + headhub::kGroup - 1) / headhub::kGroup;
  std::vector<uint64_t> A(rows * kw), B(G * kw * headhub::kGroup * g_isa.split), S(2 * rows * kw);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (auto* v : {&A, &B})
    for (auto& x : *v) x = (s = s * 6364136223846793005ull + 1442695040888963407ull);
  if (g_isa.split == 2)
    for (auto& x : B) x &= 0x0f0f0f0f0f0f0f0full;
  std::vector<int32_t> C(rows * G * headhub::kGroup);
  const int64_t ldc = G * headhub::kGroup;
  py::gil_scoped_release nogil;
  g_isa.gemm(A.data(), rows, kw, B.data(), G, kw, C.data(), ldc, S.data());  // warm up
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  for (int64_t i = 0; i < reps; ++i) g_isa.gemm(A.data(), rows, kw, B.data(), G, kw, C.data(), ldc, S.data());
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + double(t1.tv_nsec - t0.tv_nsec);
  return double(reps) * rows * ldc * kw * 64 / ns;
}

}  // namespace

PYBIND11_MODULE(_bitops, m) {
  register_layout_ops(m);
  m.doc() = "XOR-popcount kernels for binary conv/linear layers on channel-packed bits";
  m.def("isa", [] { return std::string(g_isa.name); }, "instruction set of the active kernel");
  m.def("set_isa", [](const std::string& name) {
    if (!cpu_supports(name)) throw std::invalid_argument("CPU does not support " + name);
    g_isa = isa_by_name(name);
  });
  m.def("cpu_supports", &cpu_supports);
  m.def("max_threads", [] { return threads_for(0); });
  m.def("prepare_weights", &py_prepare, py::arg("w"),
        "(O, Kw) packed weights -> the active kernel's layout (redo after set_isa)");
  m.def("profile", &py_profile, py::arg("enable"),
        "kernel time per phase (pack, im2col, popcount GEMM, epilogue; ms summed over threads) "
        "since the last call; resets the totals and turns the timing on or off");
  m.def("tap_popcounts", &py_tap_popcounts, py::arg("w"), py::arg("taps"),
        "(O, taps*Cw) packed weights -> (taps*O) int32 popcount of each tap's words");
  m.def("conv", &py_conv, py::arg("a"), py::arg("w"), py::arg("wprep"), py::arg("tap_pc"),
        py::arg("channels"), py::arg("kh"),
        py::arg("kw"), py::arg("stride"), py::arg("pad"), py::arg("scale"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("threads"), py::arg("thresholds") = py::none(),
        py::arg("flip") = py::none());
  m.def("linear", &py_linear, py::arg("a"), py::arg("w"), py::arg("wprep"), py::arg("k"), py::arg("scale"),
        py::arg("bias"), py::arg("residual"), py::arg("out"), py::arg("threads"),
        py::arg("thresholds") = py::none(), py::arg("flip") = py::none());
  m.def("peak_macs_per_ns", &py_peak, py::arg("kw") = 72, py::arg("rows") = 48,
        py::arg("outs") = 64, py::arg("reps") = 2000);
}
