# Stand-in: Slicer writes <Extension>Config.cmake for dependent extensions; nothing depends on this one.
