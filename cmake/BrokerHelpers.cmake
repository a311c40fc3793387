# broker_cc_library(NAME SRCS HDRS DEPS): a static library `broker_<NAME>` with
# the alias `broker::<NAME>`, our warnings, and the repository root as include
# directory so that headers are included as "filters/rule_set.h".
function(broker_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  set(target broker_${ARG_NAME})
  if(ARG_SRCS)
    add_library(${target} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_compile_options(${target} PRIVATE ${BROKER_WARNING_FLAGS})
    target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR})
    target_link_libraries(${target} PUBLIC ${ARG_DEPS})
  else()
    add_library(${target} INTERFACE ${ARG_HDRS})
    target_include_directories(${target} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(${target} INTERFACE ${ARG_DEPS})
  endif()
  add_library(broker::${ARG_NAME} ALIAS ${target})
  if(BROKER_CLANG_TIDY AND ARG_SRCS)
    set_target_properties(${target} PROPERTIES CXX_CLANG_TIDY "clang-tidy")
  endif()
endfunction()

# broker_cc_binary(NAME OUTPUT SRCS DEPS): an executable named OUTPUT.
function(broker_cc_binary)
  cmake_parse_arguments(ARG "" "NAME;OUTPUT" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${BROKER_WARNING_FLAGS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  if(ARG_OUTPUT)
    set_target_properties(${ARG_NAME} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT})
  endif()
  if(BROKER_CLANG_TIDY)
    set_target_properties(${ARG_NAME} PROPERTIES CXX_CLANG_TIDY "clang-tidy")
  endif()
endfunction()

# broker_cc_test(NAME SRCS DEPS [LABELS] [TEST_PREFIX] [SERIAL]): a GoogleTest binary
# registered with CTest test by test. LABELS default to "unit". TEST_PREFIX
# is put before each test's name ("dispatcher." lets `ctest -R dispatcher`
# select a whole area).
function(broker_cc_test)
  cmake_parse_arguments(ARG "SERIAL" "NAME;TEST_PREFIX" "SRCS;DEPS;LABELS"
                        ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  # SERIAL: ctest runs each case alone (a heavy test that would starve, or
  # be starved by, the tests beside it).
  set(_serial FALSE)
  if(ARG_SERIAL)
    set(_serial TRUE)
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${BROKER_WARNING_FLAGS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock_main)
  target_compile_definitions(${ARG_NAME} PRIVATE
    BROKER_TEST_FIXTURES_DIR="${PROJECT_SOURCE_DIR}/tests/fixtures")
  # Every test case has a deadline: a hang fails that case instead of
  # stalling the whole run.
  gtest_discover_tests(${ARG_NAME}
    TEST_PREFIX "${ARG_TEST_PREFIX}"
    DISCOVERY_MODE PRE_TEST
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT 300 RUN_SERIAL ${_serial})
endfunction()
