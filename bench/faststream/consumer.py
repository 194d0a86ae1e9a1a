"""FastStream peer for sluice-bench: a JetStream pull consumer that acks each
message after its (no-op) handler, as a Python service would be written.

Usage: consumer.py NATS_URL STREAM SUBJECT DURABLE BATCH

Prints `ready` once subscribed, then `progress N` (events acknowledged so
far) every 5 ms to stdout; the harness reads these lines. Runs until killed.
"""

import asyncio
import sys

from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

url, stream, subject, durable, batch = sys.argv[1:6]

broker = NatsBroker(url, logger=None)
app = FastStream(broker, logger=None)
handled = 0


@broker.subscriber(
    subject,
    stream=JStream(stream, declare=False),
    durable=durable,
    pull_sub=PullSub(batch_size=int(batch), timeout=1.0),
    ack_policy=AckPolicy.MANUAL,
)
async def handle(body, msg: NatsMessage) -> None:
    global handled
    await msg.ack()
    handled += 1


async def report() -> None:
    last = -1
    while True:
        if handled != last:
            last = handled
            print(f"progress {last}", flush=True)
        await asyncio.sleep(0.005)


@app.after_startup
async def started() -> None:
    print("ready", flush=True)
    asyncio.get_running_loop().create_task(report())


if __name__ == "__main__":
    asyncio.run(app.run())
