// fetch-js: the JavaScript twin of plugins/fetch and plugins/fetch-py (the
// outbound HTTP test plugin). The event's payload holds URLs, one per line;
// the plugin GETs each in turn (without an idempotency key when the line
// starts with `-`) and publishes `<status> <body bytes>` per URL to
// `fetched.out`. The first failed request fails the event with the SDK's
// error (permanent when the host refused it, retryable on a timeout),
// uncaught, as `?` does in Rust.
import { http, publish } from "sluice";

export function handle(event) {
  let report = "";
  for (const raw of event.text().split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const keyed = !line.startsWith("-");
    const request = new http.Request("GET", keyed ? line : line.slice(1));
    if (!keyed) request.withoutIdempotencyKey();
    const response = request.send();
    report += `${response.status} ${response.body.length}\n`;
  }
  publish("fetched.out", report);
}
