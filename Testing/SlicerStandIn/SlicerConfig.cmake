# Stand-in for an installed Slicer's SlicerConfig.cmake, for Testing/test_packaging.py.
#
# It defines only what an extension made of scripted modules uses, with the values and meanings
# of Slicer 5.8-5.12 (CMake/SlicerConfig.cmake.in, SlicerMacroBuildScriptedModule.cmake,
# SlicerMacroPythonTesting.cmake, and CTK's ctkMacroCompilePythonScript.cmake were read to learn
# them; nothing is copied). The macros are this project's own re-implementations of that mechanism:
# copy each script/resource to <destination>/<path as given> at build time, byte-compile the
# scripts, install only the destination folder.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 8)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_LIB_DIR "lib/Slicer-${Slicer_VERSION}")
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
# An extension build installs relative to its own package root.
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
