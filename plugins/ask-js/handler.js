// ask-js: the JavaScript twin of plugins/ask and plugins/ask-py (the request
// example). An event on `ask.<subject>` makes the plugin send its payload as
// a request to `<subject>` and publish the answer to `asked.<subject>`. A
// refused request (not granted) is published as `refused: <why>` instead, so
// the refusal can be seen; no answer in time fails the event as retryable.
import { Permanent, RequestRefused, publish, request } from "sluice";

export function handle(event) {
  if (!event.subject.startsWith("ask.")) throw new Permanent("expected ask.<subject>");
  const target = event.subject.slice("ask.".length);
  const out = `asked.${target}`;
  let answer;
  try {
    answer = request(target, event.payload);
  } catch (e) {
    if (!(e instanceof RequestRefused) || e.kind !== "not-granted") throw e;
    publish(out, `refused: ${e.detail}`);
    return;
  }
  publish(out, answer.payload);
}
