"""ask-py: the Python twin of plugins/ask (the request example). An event on
``ask.<subject>`` makes the plugin send its payload as a request to
``<subject>`` and publish the answer to ``asked.<subject>``. A refused
request (not granted) is published as ``refused: <why>`` instead, so the
refusal can be seen; no answer in time fails the event as retryable.
"""

import sluice


def handle(event: sluice.Event) -> None:
    if not event.subject.startswith("ask."):
        raise sluice.Permanent("expected ask.<subject>")
    target = event.subject[len("ask."):]
    out = f"asked.{target}"
    try:
        answer = sluice.request(target, event.payload)
    except sluice.RequestRefused as refused:
        if refused.kind != "not-granted":
            raise
        sluice.publish(out, f"refused: {refused.detail}")
        return
    sluice.publish(out, answer.payload)
