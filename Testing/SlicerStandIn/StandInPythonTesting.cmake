# slicer_add_python_unittest, re-implemented for a machine without Slicer: registers the ctest
# py_<script name> that Slicer would run as `Slicer --testing --python-code
# "slicer.testing.runUnitTest([<binary dir>, <script dir>], '<name>')"`. Here the command runs
# runUnitTestStandIn.py with plain Python: it imports the module the same way and checks that it
# defines the unittest case Slicer would run.
macro(slicer_add_python_unittest)
  cmake_parse_arguments(_APU "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(_apu_name "${_APU_SCRIPT}" NAME_WE)
  get_filename_component(_apu_dir "${_APU_SCRIPT}" PATH)
  if("${_apu_dir}" STREQUAL "")
    set(_apu_dir "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  add_test(NAME py_${_APU_TESTNAME_PREFIX}${_apu_name}
    COMMAND ${Python3_EXECUTABLE} "${_SLICER_STANDIN_DIR}/runUnitTestStandIn.py"
            "${CMAKE_CURRENT_BINARY_DIR}" "${_apu_dir}" "${_apu_name}")
endmacro()
