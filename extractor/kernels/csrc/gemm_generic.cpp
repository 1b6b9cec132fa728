// Portable path: no ISA assumption beyond the compiler's baseline.
#include "bitgemm.h"

namespace headhub::isa_generic {
#include "gemm_scalar.inc"
}  // namespace headhub::isa_generic
