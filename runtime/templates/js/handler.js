// `{{name}}`: a sluice consumer plugin. Parses the payload as JSON, logs it,
// and publishes it to `<subject>.seen`. Edit `handle`; build with `make`.
//
// Helpers (docs/writing-plugins.md, JavaScript section) are in the commented
// examples below. Each capability must also be granted in `{{name}}.toml`
// (`[config]`, `state = true`, `request = [...]`, `http = [...]`). Leaving
// one of their errors uncaught fails the event as the Rust SDK's `?` would:
// retryable when a retry could help (store or service unavailable, HTTP
// timeout or connection failure), permanent otherwise (not granted, refused).
import { info, Permanent, publishJson } from "sluice";
// import { config, http, idempotencyKey, request, Retryable, state } from "sluice";

/** @param {import("sluice").Event} event */
export function handle(event) {
  const value = event.json(); // bad JSON -> Permanent
  if (value === null) throw new Permanent("expected a JSON value, got null");
  info(`{{name}} got an event on ${event.subject}`);

  // Configuration: the manifest's [config], the operator's values and secrets.
  // const apiUrl = config.get("api_url") ?? "https://api.example.com";
  // const token = config.require("api_token"); // unset -> Permanent naming the key

  // State (manifest: state = true); writes commit only if handle returns.
  // const entry = state.get("count");
  // const count = entry === null ? 0 : Number(new TextDecoder().decode(entry.value));
  // state.cas("count", entry === null ? 0n : entry.revision, String(count + 1)); // changed meanwhile -> retried

  // Ask another service (manifest: request = ["prices.>"]).
  // const answer = request("prices.quote", '{"sku":"A-1"}', { timeoutMs: 2000 });

  // Outbound HTTP (manifest: http = ["https://api.example.com"]). Every
  // request carries the event's idempotency key as `Idempotency-Key`.
  // const response = http.postJson(`${apiUrl}/v1/charges`, value);
  // const items = new http.Request("GET", `${apiUrl}/v1/items`).header("Authorization", `Bearer ${token}`).send();
  // if (!response.isSuccess) throw new Retryable(`API answered ${response.status}`);
  // const data = response.json();

  // The key the host gives this event (the same on every retry of it).
  // const key = idempotencyKey();

  publishJson(`${event.subject}.seen`, value); // sent only if handle returns
}
