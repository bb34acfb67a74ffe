"""First on PYTHONPATH, this makes `import tensorflow` and `import tensorflow_datasets` fail as
if they were not installed (the GPU machine has neither), in the process and in every process
it starts. Tests put it there with core_imports_test.without_tensorflow(); any other
sitecustomize later on the path then does not run."""

import importlib.machinery as _machinery

_find_spec = _machinery.PathFinder.find_spec.__func__
_HIDDEN = ("tensorflow", "tensorflow_datasets")


def _hiding_find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] in _HIDDEN:
        return None
    return _find_spec(cls, name, path, target)


_machinery.PathFinder.find_spec = classmethod(_hiding_find_spec)
