"""The component's entry module (componentize-py's app): exports the
contract's ``handler`` interface by calling ``handle(event)`` from the
plugin's ``handler.py`` and turning the SDK's exceptions into the contract's
error variants. Any other exception prints its traceback to stderr and
aborts (a trap): the host records a trap with the last stderr lines, which end
with the exception's type and message, in the dead letter.
"""

import os
import sys
import traceback

import handler as _plugin
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import sluice_plugin_types as types

from sluice import Event, Permanent, Retryable
from sluice import _capabilities

_handle = getattr(_plugin, "handle", None)
if not callable(_handle):
    raise RuntimeError("handler.py must define `def handle(event) -> None`")


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        try:
            _capabilities.set_current_key(event.idempotency_key)
            _handle(Event.from_wit(event))
        except Retryable as e:
            raise Err(
                types.HandlerError_Retryable(types.RetryableError(e.message, e.retry_after_ms))
            ) from None
        except Permanent as e:
            raise Err(types.HandlerError_Permanent(e.message)) from None
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os.abort()
