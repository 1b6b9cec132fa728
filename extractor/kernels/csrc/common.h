// Helpers shared by the pybind11 translation units: checked raw pointers into numpy arrays and the
// OpenMP thread count.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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

}  // namespace headhub
