# Finds the CuTe/CUTLASS headers that PyPI's nvidia-cutlass ships (cutlass_library/source/include).
# Override with -DTILEATTN_CUTE_INCLUDE_DIR=/path/to/include.
if(NOT TILEATTN_CUTE_INCLUDE_DIR)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c "import os, cutlass_library; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))"
      OUTPUT_VARIABLE _cute_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _cute_rc)
    if(_cute_rc EQUAL 0)
      set(TILEATTN_CUTE_INCLUDE_DIR "${_cute_dir}")
    endif()
  endif()
endif()
if(NOT TILEATTN_CUTE_INCLUDE_DIR OR NOT EXISTS "${TILEATTN_CUTE_INCLUDE_DIR}/cute/arch/mma_sm90_gmma.hpp")
  message(FATAL_ERROR "tileattn: CuTe headers not found. Run scripts/install-deps.sh (pip install --no-deps nvidia-cutlass==4.2.0.0) "
                      "or pass -DTILEATTN_CUTE_INCLUDE_DIR=<dir containing cute/>, or -DTILEATTN_CUDA=OFF for a host-only build.")
endif()
set(TILEATTN_CUTE_INCLUDE_DIR "${TILEATTN_CUTE_INCLUDE_DIR}" CACHE PATH "CuTe/CUTLASS include directory")
message(STATUS "tileattn: CuTe headers in ${TILEATTN_CUTE_INCLUDE_DIR}")
