# slicerMacroBuildScriptedModule, re-implemented: checks that every listed file exists, then hands
# the lists to ctkMacroCompilePythonScript with <build>/qt-scripted-modules as destination and
# installs that folder's content (not the folder) into the extension's qt-scripted-modules.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(_BSM "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(_BSM_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${_BSM_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED _BSM_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()
  foreach(_file ${_BSM_SCRIPTS} ${_BSM_RESOURCES})
    if(IS_ABSOLUTE "${_file}")
      set(_abs "${_file}")
    else()
      set(_abs "${CMAKE_CURRENT_SOURCE_DIR}/${_file}")
    endif()
    if(NOT EXISTS "${_abs}" AND NOT EXISTS "${_abs}.py")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${_file}'")
    endif()
  endforeach()
  if(NOT Slicer_USE_PYTHONQT)
    message(FATAL_ERROR "Scripted module '${_BSM_NAME}' needs Slicer_USE_PYTHONQT")
  endif()
  set(_bsm_subdir "")
  set(_bsm_no_install_subdir NO_INSTALL_SUBDIR)
  if(_BSM_WITH_SUBDIR)
    get_filename_component(_bsm_subdir "${CMAKE_CURRENT_SOURCE_DIR}" NAME)
    set(_bsm_subdir "/${_bsm_subdir}")
    set(_bsm_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${_BSM_NAME}
    SCRIPTS "${_BSM_SCRIPTS}"
    RESOURCES "${_BSM_RESOURCES}"
    DESTINATION_DIR "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_bsm_subdir}"
    INSTALL_DIR "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    ${_bsm_no_install_subdir}
    )
endmacro()
