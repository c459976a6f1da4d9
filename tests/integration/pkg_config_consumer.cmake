# cmake -DPREFIX=... -DWORK_DIR=... -DCXX=... -DSOURCE_DIR=... -DVERSION=... -P pkg_config_consumer.cmake
# Without CMake: compiles the consumer against the installed package with nothing but
#   <CXX> -std=c++20 $(pkg-config --cflags --libs buffered) main.cpp
# (PKG_CONFIG_PATH pointing into the install prefix), runs it, and checks the .pc file's version
# and that its flags choose no language standard for the user.
cmake_minimum_required(VERSION 3.21)
find_program(PKG_CONFIG NAMES pkg-config pkgconf)
if(NOT PKG_CONFIG)
  message("SKIPPED: pkg-config not found")
  return()
endif()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(ENV{PKG_CONFIG_PATH} ${PREFIX}/share/pkgconfig)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "pkg-config consumer: `${ARGN}` failed (${result}):\n${out}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()
run(${PKG_CONFIG} --modversion buffered)
if(NOT out STREQUAL VERSION)
  message(FATAL_ERROR "buffered.pc says version ${out}, the project is ${VERSION}")
endif()
run(${PKG_CONFIG} --cflags --libs buffered)
set(flags "${out}")
if(flags MATCHES "-std=")
  message(FATAL_ERROR "buffered.pc imposes a language standard: ${flags}")
endif()
separate_arguments(flag_list UNIX_COMMAND "${flags}")
run(${CXX} -std=c++20 ${flag_list} ${SOURCE_DIR}/tests/integration/consumer/main.cpp
    -o ${WORK_DIR}/consumer)
run(${WORK_DIR}/consumer)
message(STATUS "pkg-config consumer (${flags}): ${out}")
