#pragma once
/* Symbol visibility: the library is built with hidden visibility (CMakeLists.txt), so only what is marked here is
   exported: the C ABI (tileattn.h, TILEATTN_EXPORT on each function) and the public C++ API, whose headers put their
   declarations between TILEATTN_PUBLIC_BEGIN and TILEATTN_PUBLIC_END (a visibility pragma: GCC, clang and nvcc
   all give the declarations inside it, and their definitions elsewhere, default visibility; an attribute on the
   namespace would not do, since clang takes the visibility of the namespace that holds the definition). The
   library's internal code under src/ stays hidden. Valid C, so tileattn.h can include it. */
#if defined(_WIN32)
#define TILEATTN_EXPORT
#define TILEATTN_PUBLIC_BEGIN
#define TILEATTN_PUBLIC_END
#else
#define TILEATTN_EXPORT __attribute__((visibility("default")))
#define TILEATTN_PUBLIC_BEGIN _Pragma("GCC visibility push(default)")
#define TILEATTN_PUBLIC_END _Pragma("GCC visibility pop")
#endif
