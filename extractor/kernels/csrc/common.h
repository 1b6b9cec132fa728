// Helpers shared by the pybind11 translation units: checked raw pointers into numpy arrays and the
// OpenMP thread count.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace headhub {
namespace py = pybind11;

template <class T>
inline T* data_of(py::array& a, const char* what, int ndim) {
  if (a.ndim() != ndim) throw std::invalid_argument(std::string(what) + ": wrong number of dims");
  if (a.itemsize() != static_cast<py::ssize_t>(sizeof(T)))
    throw std::invalid_argument(std::string(what) + ": wrong dtype size");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(what) + ": must be C-contiguous");
  return static_cast<T*>(a.mutable_data());
}

template <class T>
inline const T* optional_vec(const py::object& o, const char* what, int64_t n) {
  if (o.is_none()) return nullptr;
  auto a = o.cast<py::array>();
  if (a.ndim() != 1 || a.shape(0) != n || a.itemsize() != static_cast<py::ssize_t>(sizeof(T)) ||
      !(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(what) + ": expected a contiguous vector of length " +
                                std::to_string(n));
  return static_cast<const T*>(a.data());
}

inline int threads_for(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

void register_layout_ops(py::module_& m);  // layout.cpp
int active_isa_level();  // module.cpp: 2 AVX-512 VPOPCNTDQ, 1 AVX2, 0 otherwise (the active kernel)

// Loops that run once per activation value are cloned per ISA (ifunc dispatch when the module
// loads): 512/256-bit vectors where the CPU has them although the build has no -march. Still no
// FMA: -ffp-contract=off keeps y * scale + bias two roundings, as in torch.
#if defined(__x86_64__) && defined(__GNUC__)
#define HEADHUB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HEADHUB_CLONES
#endif

// Optional per-phase kernel time for the benchmark's "where the time goes" (`_bitops.profile`),
// summed over threads. Off by default; when on, two clock reads per phase per work item.
enum Phase { kPack, kIm2col, kGemm, kEpilogue, kPhases };
inline std::atomic<bool> g_profile{false};
inline std::atomic<int64_t> g_phase_ns[kPhases];

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct PhaseClock {
  bool on = g_profile.load(std::memory_order_relaxed);
  int64_t t = on ? now_ns() : 0;
  void lap(int phase) {
    if (!on) return;
    const int64_t t1 = now_ns();
    g_phase_ns[phase].fetch_add(t1 - t, std::memory_order_relaxed);
    t = t1;
  }
};

}  // namespace headhub
