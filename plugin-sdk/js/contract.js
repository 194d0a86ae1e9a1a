// The one place that names the contract's imports (sluice:plugin@0.1.0).
// A newer contract version adds its imports here and its helpers in sluice.js.
import { log as witLog } from "sluice:plugin/logging@0.1.0";
import { publish as witPublish } from "sluice:plugin/publisher@0.1.0";

export const CONTRACT_VERSION = "0.1.0";

/** Log levels, lowest first. */
export const LEVELS = ["trace", "debug", "info", "warn", "error"];

export function hostLog(level, message, fields) {
  witLog(level, message, fields);
}

/** Returns undefined when queued, else the refusal variant {tag, val}. */
export function hostPublish(subject, payload, headers) {
  try {
    witPublish(subject, payload, headers);
    return undefined;
  } catch (e) {
    // componentize-js throws the `err` case of a result as e.payload.
    const refusal = e !== null && typeof e === "object" && "payload" in e ? e.payload : e;
    if (refusal && typeof refusal.tag === "string") return refusal;
    throw e;
  }
}
