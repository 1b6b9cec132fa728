// Scalar path with the POPCNT instruction (any x86-64 since ~2008).
#include "bitgemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("popcnt")
namespace headhub::isa_popcnt {
#include "gemm_scalar.inc"
}  // namespace headhub::isa_popcnt
#pragma GCC pop_options
#else
namespace headhub::isa_popcnt {
HEADHUB_GEMM_DECL { isa_generic::gemm(A, R, lda, Bi, G, Kw, C, ldc, scratch); }
}  // namespace headhub::isa_popcnt
#endif
