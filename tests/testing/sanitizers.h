#pragma once

// Whether this test binary runs under AddressSanitizer (scripts/test.sh's
// build/asan): tests that assert a figure (a time, a rate) allow it more,
// since the figure is measured on the optimised build.

namespace broker::testing {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kUnderSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kUnderSanitizer = true;
#else
inline constexpr bool kUnderSanitizer = false;
#endif
#else
inline constexpr bool kUnderSanitizer = false;
#endif

// `figure` normally, `factor` times it under a sanitizer.
template <typename T>
constexpr T FigureBound(T figure, int factor = 3) {
  return kUnderSanitizer ? figure * factor : figure;
}

}  // namespace broker::testing
