# Runtime ISA dispatch (backend/dispatch.hpp): one shared library of compiled kernels per x86 ISA
# variant, libattnkit_kernels_{sse2,avx2,avx512}, each built with its own -march and exporting only
# its entry points (src/kernels.map), so code compiled for one ISA is never shared with another
# variant or with the caller. attnkit::attnkit links all three and defines ATTNKIT_DISPATCH=1:
# a consumer built with default flags runs the running CPU's best kernels.
option(ATTNKIT_DISPATCH "Compile per-ISA kernel libraries and pick one at run time (x86-64)" ON)

set(ATTNKIT_KERNEL_SOURCES ${PROJECT_SOURCE_DIR}/src/dense_kernels.cpp)
set(ATTNKIT_VARIANTS sse2 avx2 avx512)
set(ATTNKIT_MARCH_sse2 x86-64)
set(ATTNKIT_MARCH_avx2 x86-64-v3)
set(ATTNKIT_MARCH_avx512 x86-64-v4)

set(ATTNKIT_VARIANT_TARGETS)
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-mavx512bf16 ATTNKIT_HAVE_MAVX512BF16)
if(ATTNKIT_DISPATCH AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  foreach(isa ${ATTNKIT_VARIANTS})
    set(target attnkit_kernels_${isa})
    string(TOUPPER ${isa} ISA)
    add_library(${target} SHARED ${ATTNKIT_KERNEL_SOURCES})
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/include)
    target_compile_features(${target} PRIVATE cxx_std_20)
    target_link_libraries(${target} PRIVATE xsimd OpenMP::OpenMP_CXX)
    target_compile_definitions(${target} PRIVATE ATTNKIT_VARIANT_${ISA} ATTNKIT_DISPATCH=1)
    target_compile_options(${target} PRIVATE -march=${ATTNKIT_MARCH_${isa}} -Wall -Wextra
                                             $<$<BOOL:${ATTNKIT_WERROR}>:-Werror>)
    # g++ 12's AVX-512 intrinsics trip -W(maybe-)uninitialized (GCC bug 105593, fixed in g++ 13).
    if(isa STREQUAL "avx512" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      target_compile_options(${target} PRIVATE -Wno-uninitialized -Wno-maybe-uninitialized)
    endif()
    # AVX512-BF16's vdpbf16ps for bfloat16 Q . K^T (tile/bf16_pairs.hpp), run only where the CPU has it.
    if(isa STREQUAL "avx512" AND ATTNKIT_HAVE_MAVX512BF16)
      target_compile_options(${target} PRIVATE -mavx512bf16)
    endif()
    target_link_options(${target} PRIVATE -Wl,--version-script=${PROJECT_SOURCE_DIR}/src/kernels.map)
    set_target_properties(${target} PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
                                               LINK_DEPENDS ${PROJECT_SOURCE_DIR}/src/kernels.map)
    list(APPEND ATTNKIT_VARIANT_TARGETS ${target})
  endforeach()
  target_link_libraries(attnkit INTERFACE ${ATTNKIT_VARIANT_TARGETS})
  target_compile_definitions(attnkit INTERFACE ATTNKIT_DISPATCH=1)
endif()
