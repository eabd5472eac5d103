# quantd_cc_library(NAME name SRCS ... DEPS ... [TESTS test.cc ...] [TEST_DEPS ...])
# Builds library quantd_<name> with alias quantd::<name>, like abseil's absl_cc_library.
# Each TESTS source becomes its own gtest binary registered with CTest.
function(quantd_cc_library)
  cmake_parse_arguments(Q "" "NAME" "SRCS;DEPS;TESTS;TEST_DEPS" ${ARGN})
  set(target quantd_${Q_NAME})
  add_library(${target} ${Q_SRCS})
  add_library(quantd::${Q_NAME} ALIAS ${target})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${target} PUBLIC ${Q_DEPS})
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(QUANTD_BUILD_TESTS)
    foreach(test_src ${Q_TESTS})
      get_filename_component(test_name ${test_src} NAME_WE)
      add_executable(${test_name} ${test_src})
      target_link_libraries(${test_name} PRIVATE ${target} ${Q_TEST_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
      add_test(NAME ${test_name} COMMAND ${test_name})
      set_tests_properties(${test_name} PROPERTIES
        ENVIRONMENT "QUANTD_SOURCE_DIR=${PROJECT_SOURCE_DIR};QUANTD_BINARY_DIR=${PROJECT_BINARY_DIR}"
        LABELS unit)
    endforeach()
  endif()
endfunction()

# quantd_cc_binary(NAME name SRCS ... DEPS ...)
function(quantd_cc_binary)
  cmake_parse_arguments(Q "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${Q_NAME} ${Q_SRCS})
  # Binaries land in the build root: build/quantd, build/quantd-worker, build/quantctl, ...
  set_target_properties(${Q_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS})
  target_compile_options(${Q_NAME} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()
