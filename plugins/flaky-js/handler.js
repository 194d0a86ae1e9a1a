// `flaky` in JavaScript: fails with a retryable error for the first N attempts
// of each event, N from the `x-fail-times` header (default 0), then succeeds.
// It publishes `<subject>.done` on every attempt, so tests see that publishes
// of failed attempts are discarded (the outbox). As plugins/flaky, plus two
// headers to show the other outcomes:
//
// - `x-retry-after-ms`: a delay hint on the retryable error;
// - `x-fail-until-ms` (Unix epoch ms): every attempt before then fails (retryable);
// - `x-permanent: MESSAGE`: fail with a permanent error (dead-lettered at once);
// - `x-throw: MESSAGE`: throw an uncaught exception (a trap).
import { info, Permanent, publish, Retryable } from "sluice";

const int = (text) => (text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined);

export function handle(event) {
  const failTimes = int(event.header("x-fail-times")) ?? 0;
  publish(`${event.subject}.done`, event.payload, [["x-attempt", String(event.attempt)]]);
  const permanent = event.header("x-permanent");
  if (permanent !== undefined) throw new Permanent(permanent);
  const crash = event.header("x-throw");
  if (crash !== undefined) throw new TypeError(crash);
  const until = int(event.header("x-fail-until-ms"));
  if (until !== undefined && Date.now() < until) {
    throw new Retryable(`dependency down for another ${until - Date.now()} ms`);
  }
  if (event.attempt <= failTimes) {
    throw new Retryable(`simulated failure ${event.attempt} of ${failTimes}`, int(event.header("x-retry-after-ms")));
  }
  info(`flaky succeeded on attempt ${event.attempt}`);
}
