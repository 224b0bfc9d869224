"""Objects a config names as "package.module:name" (a custom strategy's rule, a model factory),
imported from the working directory or the Python path while the config is validated."""

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _working_directory_importable() -> Iterator[str]:
    # `python -m` puts the working directory on sys.path, the `fedbridge` console script does not;
    # taken off again afterwards so that validating many configs leaves sys.path as it was
    cwd = os.getcwd()
    added = cwd not in {os.path.realpath(p or os.curdir) for p in sys.path}  # "" is the working directory too
    if added:
        sys.path.insert(0, cwd)
    try:
        yield cwd
    finally:
        if added:
            sys.path.remove(cwd)


def _import(module: str) -> Any:
    with _working_directory_importable() as cwd:
        importlib.invalidate_caches()  # a module written after this process started (a notebook, a test)
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise ValueError(f"importing module {module!r} failed: {e}") from None
            path = ", ".join(str(p) for p in sys.path if p and p != cwd)
            raise ValueError(f"cannot import module {module!r}: {e}; looked in the working directory {cwd} "
                             f"and on the Python path ({path})") from None
        except Exception as e:  # the module's own code runs here, and may raise anything
            raise ValueError(f"importing module {module!r} raised {type(e).__name__}: {e}") from None


def resolve(text: str, kind: str) -> Any:
    """The object "package.module:name" names, imported from the working directory or the Python
    path; ValueError saying what failed, which the config's message shows under its key."""
    module, sep, name = text.partition(":")
    if not (sep and name.isidentifier() and all(part.isidentifier() for part in module.split("."))):
        raise ValueError(f'write it as "package.module:{kind}", the module\'s import path, a colon and the '
                         f'{kind}\'s name, e.g. "myrules:weighted_median"')
    imported = _import(module)
    if not hasattr(imported, name):
        # the file says which module was found: one of that name imported before (or earlier on the
        # path) may not be yours
        where = getattr(imported, "__file__", None)
        raise ValueError(f"module {module!r}{f' ({where})' if where else ''} has no attribute {name!r}")
    return getattr(imported, name)
