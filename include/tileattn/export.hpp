#pragma once
/* Symbol visibility: the library is built with hidden visibility (CMakeLists.txt), so only what is marked here is
   exported: the C ABI (tileattn.h) and the public C++ API, whose headers open `namespace tileattn TILEATTN_EXPORT`
   (the attribute after the name, as libstdc++ writes it: the form GCC, clang and nvcc all accept). They apply a
   namespace's visibility to the declarations in that namespace body only; the library's internal namespaces under
   src/ stay hidden. Valid C, so tileattn.h can include it. */
#if defined(_WIN32)
#define TILEATTN_EXPORT
#else
#define TILEATTN_EXPORT __attribute__((visibility("default")))
#endif
