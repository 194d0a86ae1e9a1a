// charge-js: the JavaScript twin of plugins/charge and plugins/charge-py (the
// outbound HTTP example). Each order (a JSON event) is POSTed to the payment
// API at the `url` configuration value; the SDK sends the event's idempotency
// key as `Idempotency-Key`, so a retried event charges once at an API that
// honours it.
//
// - 2xx: the API's answer is published to `charges.done`;
// - 5xx (or 429): retryable, after the API's `Retry-After` if it gives one;
// - other 4xx: permanent, the event is dead-lettered with the API's reason.
import { Permanent, Retryable, config, http, publish } from "sluice";

export function handle(event) {
  const url = config.require("url");
  const order = event.json();
  const response = http.postJson(url, order);
  if (response.isSuccess) {
    publish("charges.done", response.body, { "Content-Type": "application/json" });
  } else if (response.status === 429 || (response.status >= 500 && response.status <= 599)) {
    throw new Retryable(`payment API answered ${response.status}`, retryAfterMs(response));
  } else {
    const body = new TextDecoder().decode(response.body);
    throw new Permanent(`payment API refused the charge with ${response.status}: ${body}`);
  }
}

/** The API's `Retry-After` in milliseconds, if it sent whole seconds. */
function retryAfterMs(response) {
  const value = (response.header("retry-after") ?? "").trim();
  return /^\d+$/.test(value) ? Number(value) * 1000 : undefined;
}
