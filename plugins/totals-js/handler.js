// totals-js: the JavaScript twin of plugins/totals and plugins/totals-py (a
// running total per key in state, updated with compare-and-swap, published
// to `totals.updated.<key>`).
//
// For tests: header `x-fail` makes the handler fail after writing (the write
// must vanish).
import { Permanent, Retryable, publish, state } from "sluice";

const PREFIX = "totals.add.";
const decoder = new TextDecoder();

export function handle(event) {
  if (!event.subject.startsWith(PREFIX)) throw new Permanent("expected totals.add.<key>");
  const key = event.subject.slice(PREFIX.length);
  const text = event.text().trim();
  if (!/^[+-]?\d+$/.test(text)) throw new Permanent("the payload is not a whole number");
  const stateKey = `total/${key}`;
  const entry = state.get(stateKey);
  let total = entry === null ? 0n : BigInt(decoder.decode(entry.value) || "0");
  const revision = entry === null ? 0n : entry.revision;
  total += BigInt(text);
  state.cas(stateKey, revision, String(total));
  if (event.header("x-fail") !== undefined) throw new Retryable("failing after the write, as asked");
  publish(`totals.updated.${key}`, String(total));
}
