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
    from wit_world.imports import config, logging, publisher, requester, state
    from wit_world.imports import sluice_plugin_types as types
    from wit_world.imports import outgoing_handler, streams, wasi_http_types
except ImportError:  # not inside componentize-py
    Err = config = logging = publisher = requester = state = types = None
    outgoing_handler = streams = wasi_http_types = None

CONTRACT_VERSION = "0.2.0"

#: Log levels accepted by :func:`sluice.log`, lowest first.
LEVELS = ("trace", "debug", "info", "warn", "error")


def bindings():
    """The generated modules ``(types, logging, publisher)``."""
    if types is None:
        raise RuntimeError("the sluice contract bindings exist only inside a component built by build.sh")
    return types, logging, publisher


def capabilities():
    """The generated 0.2.0 capability modules ``(config, state, requester)``."""
    if types is None:
        raise RuntimeError("the sluice contract bindings exist only inside a component built by build.sh")
    return config, state, requester


def http_bindings():
    """The generated ``wasi:http`` modules ``(types, outgoing_handler, streams)``."""
    if wasi_http_types is None:
        raise RuntimeError("the sluice contract bindings exist only inside a component built by build.sh")
    return wasi_http_types, outgoing_handler, streams
