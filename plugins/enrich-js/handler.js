// `enrich` in JavaScript: parses a JSON object, adds fields, and publishes the
// result to `<prefix>.enriched.<rest>` (`orders.created` -> `orders.enriched.created`).
//
// The same input gives the same output bytes as the Rust plugin
// (plugins/enrich), with one JavaScript limit: an integral float in the input
// (`10.0`) is read as the number 10 and written back as `10`.
import { float, info, Permanent, publishJson } from "sluice";

// serde_json's as_f64: any JSON number, never a boolean.
const number = (v) => (typeof v === "number" ? v : undefined);

export function handle(event) {
  const order = event.json();
  if (order === null || typeof order !== "object" || Array.isArray(order)) {
    throw new Permanent("expected a JSON object");
  }
  const quantity = number(order.quantity);
  const price = number(order.unit_price);
  order.total = quantity !== undefined && price !== undefined ? float(quantity * price) : null;
  order.enriched_by = "sluice/enrich";
  order.source_subject = event.subject;
  order.idempotency_key = event.idempotencyKey;

  const dot = event.subject.indexOf(".");
  const derived =
    dot >= 0
      ? `${event.subject.slice(0, dot)}.enriched.${event.subject.slice(dot + 1)}`
      : `${event.subject}.enriched`;
  publishJson(derived, order);
  info(`enriched ${event.subject} -> ${derived}`);
}
