// `orders-shipping`: the order saga's last step (examples/orders), in JavaScript.
//
// Consumes `orders.paid`. An order to a country we ship to is booked with a
// tracking number and the saga ends as `orders.completed`. An order to a
// country we cannot ship to fails the step for good: it publishes
// `orders.shipping_failed`, which starts the compensations (the payment step
// refunds, then the inventory step releases the stock and ends the saga as
// `orders.cancelled`). Both are business outcomes: the event succeeds.
import { info, Permanent, publishJson } from "sluice";

// Where the warehouse ships to (two-letter codes).
const SHIPS_TO = new Set(["DE", "FR", "GB", "IE", "NL", "NZ", "US"]);

export function handle(event) {
  const order = event.json();
  if (typeof order !== "object" || order === null || typeof order.id !== "string") {
    throw new Permanent("an order must be a JSON object with an `id`");
  }
  const country = String(order.country ?? "").toUpperCase();
  if (!SHIPS_TO.has(country)) {
    order.reason = `we do not ship to ${country || "an empty country"}`;
    publishJson("orders.shipping_failed", order);
    info(`order ${order.id}: ${order.reason}; compensating`);
    return;
  }
  order.tracking = `TRK-${order.id}-${country}`;
  publishJson("orders.completed", order);
  info(`order ${order.id} shipped to ${country} (${order.tracking})`);
}
