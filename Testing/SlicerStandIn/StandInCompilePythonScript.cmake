# ctkMacroCompilePythonScript, re-implemented: the same arguments and the same destination rule.
#   SCRIPTS/RESOURCES given relative to SOURCE_DIR (default: the current source folder) are copied
#   to DESTINATION_DIR/<the path as given>; a "../x.py" therefore lands outside DESTINATION_DIR.
#   An absolute script path lands at DESTINATION_DIR/<its path relative to the current binary dir>.
#   Only DESTINATION_DIR (its content with NO_INSTALL_SUBDIR) is installed, into INSTALL_DIR.
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(_CPS "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(_var TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED _CPS_${_var})
      message(FATAL_ERROR "${_var} is mandatory")
    endif()
  endforeach()
  if(NOT DEFINED _CPS_SOURCE_DIR)
    set(_CPS_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  get_filename_component(_CPS_SOURCE_DIR "${_CPS_SOURCE_DIR}" REALPATH)
  get_filename_component(_CPS_DESTINATION_DIR "${_CPS_DESTINATION_DIR}" REALPATH)

  set(_cps_copied_scripts)
  set(_cps_copied_resources)
  foreach(_kind SCRIPTS RESOURCES)
    foreach(_file ${_CPS_${_kind}})
      if(_kind STREQUAL "SCRIPTS")
        get_filename_component(_ext "${_file}" EXT)
        if(NOT _ext MATCHES "py")
          set(_file "${_file}.py")
        endif()
      endif()
      if(IS_ABSOLUTE "${_file}")
        set(_src "${_file}")
        if(_kind STREQUAL "SCRIPTS")
          file(RELATIVE_PATH _rel "${CMAKE_CURRENT_BINARY_DIR}" "${_file}")
        else()
          set(_rel "${_file}")
        endif()
      else()
        set(_src "${_CPS_SOURCE_DIR}/${_file}")
        set(_rel "${_file}")
      endif()
      set(_tgt "${_CPS_DESTINATION_DIR}/${_rel}")
      add_custom_command(OUTPUT "${_tgt}" DEPENDS "${_src}"
        COMMAND ${CMAKE_COMMAND} -E copy "${_src}" "${_tgt}"
        COMMENT "Copying python ${_kind}: ${_rel}")
      if(_kind STREQUAL "SCRIPTS")
        list(APPEND _cps_copied_scripts "${_tgt}")
      else()
        list(APPEND _cps_copied_resources "${_tgt}")
      endif()
    endforeach()
  endforeach()

  # Byte-compile what was copied, as the real macro does with Slicer's Python.
  set(_cps_stamp "${CMAKE_CURRENT_BINARY_DIR}/python_compile_${_CPS_TARGET_NAME}_complete")
  add_custom_command(OUTPUT "${_cps_stamp}" DEPENDS ${_cps_copied_scripts}
    COMMAND ${Python3_EXECUTABLE} -m py_compile ${_cps_copied_scripts}
    COMMAND ${CMAKE_COMMAND} -E touch "${_cps_stamp}"
    COMMENT "Compiling python scripts: ${_CPS_TARGET_NAME}")
  add_custom_target(Copy${_CPS_TARGET_NAME}PythonFiles ALL
    DEPENDS ${_cps_copied_scripts} ${_cps_copied_resources} "${_cps_stamp}")

  if(_CPS_NO_INSTALL_SUBDIR)
    set(_cps_install_dir "${_CPS_DESTINATION_DIR}/")
  else()
    set(_cps_install_dir "${_CPS_DESTINATION_DIR}")
  endif()
  install(DIRECTORY "${_cps_install_dir}" DESTINATION "${_CPS_INSTALL_DIR}"
    COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()
