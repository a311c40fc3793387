# Warning flags applied to every target made by broker_cc_library/broker_cc_test.
set(BROKER_WARNING_FLAGS -Wall -Wextra -Wconversion -Wno-sign-conversion -Wshadow)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  # Abseil's annotations are only checked by clang.
  list(APPEND BROKER_WARNING_FLAGS -Wthread-safety)
endif()
if(BROKER_WERROR)
  list(APPEND BROKER_WARNING_FLAGS -Werror)
endif()
