# How tandem's libraries are declared, so that the build shows (and enforces) which layer may use
# which.
#
# No target sees the source tree's root on its include path. Each library stages the headers of
# its own folder under ${CMAKE_BINARY_DIR}/layers/<target>/<folder>/ (symlinks) and exports only
# that staging root, so `#include "models/formats/png.h"` compiles only in a target that links
# the library owning models/formats — directly or through a library it links. A layering break
# (server/core including a generated proto, models/ including server/...) fails to compile.
#
# LibTorch's include path and flags are private to the libraries declared TORCH: only their
# translation units see <torch/torch.h>. Their consumers link torch's libraries, never its
# headers.

# tandem_library(<name> [STATIC|MODULE] [TORCH] SOURCES <file>... [HEADERS_FROM <folder>...]
#                [PUBLIC <dep>...] [PRIVATE <dep>...])
# Sources are relative to the calling CMakeLists.txt. HEADERS_FROM: other folders (relative to
# the calling one) whose headers this library owns too; the calling folder's headers are always
# staged.
function(tandem_library name)
  cmake_parse_arguments(ARG "TORCH;MODULE" "" "SOURCES;HEADERS_FROM;PUBLIC;PRIVATE" ${ARGN})
  if(ARG_MODULE)
    add_library(${name} MODULE ${ARG_SOURCES})
  else()
    add_library(${name} STATIC ${ARG_SOURCES})
  endif()
  tandem_stage_headers(${name} ${CMAKE_CURRENT_SOURCE_DIR} ${ARG_HEADERS_FROM})
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC} PRIVATE ${ARG_PRIVATE})
  if(ARG_TORCH)
    target_link_libraries(${name} PRIVATE ${TORCH_LIBRARIES})
    target_compile_options(${name} PRIVATE ${TORCH_CXX_FLAGS})
  endif()
endfunction()

# Stages the headers of `folders` (absolute, or relative to the calling folder) for `target`.
function(tandem_stage_headers target)
  set(stage ${CMAKE_BINARY_DIR}/layers/${target})
  foreach(folder ${ARGN})
    get_filename_component(abs ${folder} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${abs})
    file(GLOB headers CONFIGURE_DEPENDS ${abs}/*.h)
    file(MAKE_DIRECTORY ${stage}/${rel})
    foreach(h ${headers})
      get_filename_component(base ${h} NAME)
      if(NOT EXISTS ${stage}/${rel}/${base})
        file(CREATE_LINK ${h} ${stage}/${rel}/${base} SYMBOLIC)
      endif()
    endforeach()
  endforeach()
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE" OR type STREQUAL "MODULE_LIBRARY")
    target_include_directories(${target} PRIVATE ${stage})
  elseif(type STREQUAL "INTERFACE_LIBRARY")
    target_include_directories(${target} INTERFACE ${stage})
  else()
    target_include_directories(${target} PUBLIC ${stage})
  endif()
endfunction()

# tandem_executable(<name> SOURCES <file>... [TORCH] [LIBS <dep>...])
function(tandem_executable name)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  tandem_stage_headers(${name} ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
  if(ARG_TORCH)
    target_link_libraries(${name} PRIVATE ${TORCH_LIBRARIES})
    target_compile_options(${name} PRIVATE ${TORCH_CXX_FLAGS})
  endif()
endfunction()
