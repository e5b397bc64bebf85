# Stand-in: Slicer packs the install tree with CPack; the test installs it with `cmake --install`,
# which puts the same files in the same places.
