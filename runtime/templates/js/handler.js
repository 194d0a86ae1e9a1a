// `{{name}}`: a sluice consumer plugin. Parses the payload as JSON, logs it,
// and publishes it to `<subject>.seen`. Edit `handle`; build with `make`.
import { info, Permanent, publishJson } from "sluice";

/** @param {import("sluice").Event} event */
export function handle(event) {
  const value = event.json(); // bad JSON -> Permanent
  if (value === null) throw new Permanent("expected a JSON value, got null");
  info(`{{name}} got an event on ${event.subject}`);
  publishJson(`${event.subject}.seen`, value); // sent only if handle returns
}
