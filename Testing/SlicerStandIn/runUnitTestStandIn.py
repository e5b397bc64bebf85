"""What `slicer.testing.runUnitTest([binary_dir, script_dir], name)` does before it runs the tests:
both folders first on sys.path, import the module by name, find its ScriptedLoadableModuleTest
subclass (`<name>Test`). Outside Slicer the test case cannot run; its presence is checked."""

import importlib
import sys

binary_dir, script_dir, name = sys.argv[1:4]
sys.path[:0] = [binary_dir, script_dir]
module = importlib.import_module(name)
case = getattr(module, name + "Test", None)
if case is None or not any(k.startswith("test") for k in vars(case)):
    sys.exit(f"{name} defines no {name}Test with test methods")
print(f"{name}Test: " + ", ".join(sorted(k for k in vars(case) if k.startswith("test"))))
