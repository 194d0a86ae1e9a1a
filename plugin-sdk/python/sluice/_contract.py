"""The one place that names the generated contract bindings (``wit_world``).

componentize-py generates ``wit_world`` from ``wit/`` at build time; the rest
of the SDK goes through this module, so a newer contract version (new imports,
new event fields) is added here and in the modules that expose it.
"""

CONTRACT_VERSION = "0.1.0"

#: Log levels accepted by :func:`sluice.log`, lowest first.
LEVELS = ("trace", "debug", "info", "warn", "error")


def bindings():
    """The generated modules ``(types, logging, publisher)``.

    Imported lazily so the SDK can also be imported (and unit-tested) on a
    normal Python outside a component.
    """
    from wit_world.imports import logging, publisher, types

    return types, logging, publisher
