# BROKER_SANITIZE=address,undefined (or thread) instruments our own code. The
# Debian libraries are not instrumented, which ASan and UBSan tolerate.
if(BROKER_SANITIZE)
  set(_san_flags -fsanitize=${BROKER_SANITIZE} -fno-omit-frame-pointer)
  if(BROKER_SANITIZE MATCHES "undefined")
    list(APPEND _san_flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${_san_flags})
  add_link_options(-fsanitize=${BROKER_SANITIZE})
  message(STATUS "Sanitizers: ${BROKER_SANITIZE}")
endif()
