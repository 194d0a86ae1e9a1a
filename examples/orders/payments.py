#!/usr/bin/env python3
"""A fake payment service for the order saga (examples/orders), on loopback.

It charges a card at most once per ``Idempotency-Key``: the first request
with a key decides the outcome (charged or declined), and every later request
with that key gets the same answer back without charging again. That is what
a real payment API (Stripe, Adyen) does, and what lets sluice retry a payment
plugin safely: the host gives each event a stable idempotency key and the
plugin's HTTP helper sends it.

It can be told to misbehave (POST /admin, JSON):
  {"fail_for_ms": 4000}   answer 503 to every charge/refund for 4 s (an outage)
  {"slow_ms": 1500}       wait that long before answering
  {"decline": true}       decline every new charge (402)
  {"reset": true}         forget everything
A card number ending in 0002 is always declined (402), as with test cards.

GET /stats reports the counts that prove the saga right:
  charges       cards actually charged (money moved)
  unique_keys   distinct Idempotency-Keys among successful charges
  charge_requests, declines, refunds, refund_requests, unavailable (503s),
  replayed      (requests answered from an earlier key: retries, duplicates)

Usage: payments.py [--port N] (0, the default, picks a free port). The first
line on stdout is ``payments listening on http://127.0.0.1:PORT``.
Python standard library only.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def fresh_state():
    return {
        "answers": {},  # (path, key) -> (status, body): the first answer per key
        "charged_keys": set(),
        "charges": 0,
        "charge_requests": 0,
        "declines": 0,
        "refunds": 0,
        "refund_requests": 0,
        "unavailable": 0,
        "replayed": 0,
        "fail_until": 0.0,
        "slow_ms": 0,
        "decline": False,
    }


STATE = fresh_state()


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-payments/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the demo prints what matters
        pass

    def _send(self, status, body, extra=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                stats = {k: STATE[k] for k in ("charges", "charge_requests", "declines", "refunds",
                                                "refund_requests", "unavailable", "replayed")}
                stats["unique_keys"] = len(STATE["charged_keys"])
            self._send(200, stats)
        elif self.path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": f"no route GET {self.path}"})

    def do_POST(self):
        body = self._body()
        if body is None or not isinstance(body, dict):
            self._send(400, {"error": "the body must be a JSON object"})
            return
        if self.path == "/admin":
            self._admin(body)
        elif self.path in ("/charges", "/refunds"):
            self._payment(self.path, body)
        else:
            self._send(404, {"error": f"no route POST {self.path}"})

    def _admin(self, body):
        global STATE
        with LOCK:
            if body.get("reset"):
                STATE = fresh_state()
            if "fail_for_ms" in body:
                STATE["fail_until"] = time.monotonic() + float(body["fail_for_ms"]) / 1000
            if "slow_ms" in body:
                STATE["slow_ms"] = int(body["slow_ms"])
            if "decline" in body:
                STATE["decline"] = bool(body["decline"])
        self._send(200, {"ok": True})

    def _payment(self, path, body):
        key = self.headers.get("Idempotency-Key")
        charge = path == "/charges"
        with LOCK:
            STATE["charge_requests" if charge else "refund_requests"] += 1
            if time.monotonic() < STATE["fail_until"]:
                STATE["unavailable"] += 1
                answer = None
            elif not key:
                answer = (400, {"error": "missing Idempotency-Key header"})
            elif (path, key) in STATE["answers"]:
                STATE["replayed"] += 1
                status, saved = STATE["answers"][(path, key)]
                answer = (status, saved, {"Idempotent-Replayed": "true"})
            else:
                answer = self._decide(path, key, body)
                STATE["answers"][(path, key)] = answer
            slow = STATE["slow_ms"]
        if slow:
            time.sleep(slow / 1000)  # decided already: a retry after a timeout gets the same answer
        if answer is None:
            self._send(503, {"error": "payment service unavailable, try again"}, {"Retry-After": "1"})
        else:
            self._send(*answer)

    def _decide(self, path, key, body):
        """The first answer for `key` (called with LOCK held)."""
        order = body.get("order")
        amount = body.get("amount_cents")
        if not isinstance(order, str) or not isinstance(amount, int) or amount <= 0:
            return (422, {"error": "need order (text) and amount_cents (positive integer)"})
        if path == "/refunds":
            STATE["refunds"] += 1
            return (201, {"refund_id": f"re_{STATE['refunds']:05d}", "order": order, "amount_cents": amount})
        card = str(body.get("card") or "")
        if STATE["decline"] or card.replace(" ", "").endswith("0002"):
            STATE["declines"] += 1
            return (402, {"error": "card declined", "order": order})
        STATE["charges"] += 1
        STATE["charged_keys"].add(key)
        return (201, {"charge_id": f"ch_{STATE['charges']:05d}", "order": order, "amount_cents": amount})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"payments listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
