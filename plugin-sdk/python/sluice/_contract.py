"""The one place that names the generated contract bindings (``wit_world``).

componentize-py generates ``wit_world`` from ``wit/`` at build time; the rest
of the SDK goes through this module, so a newer contract version (new imports,
new event fields) is added here and in the modules that expose it.

Everything is imported at module level on purpose: componentize-py snapshots
the interpreter after importing the plugin, and at run time the host grants
no filesystem, so a module first imported inside a handler cannot be found.
Outside a component (unit tests of the pure helpers) the bindings are absent.
"""

try:
    from componentize_py_types import Err
    from wit_world.imports import logging, publisher, types
except ImportError:  # not inside componentize-py
    Err = logging = publisher = types = None

CONTRACT_VERSION = "0.1.0"

#: Log levels accepted by :func:`sluice.log`, lowest first.
LEVELS = ("trace", "debug", "info", "warn", "error")


def bindings():
    """The generated modules ``(types, logging, publisher)``."""
    if types is None:
        raise RuntimeError("the sluice contract bindings exist only inside a component built by build.sh")
    return types, logging, publisher
