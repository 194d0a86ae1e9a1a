// sluice: write a sluice consumer plugin in JavaScript as one function.
//
// A plugin is a module `handler.js` with
//
//     import { publishJson, Permanent, info } from "sluice";
//     export function handle(event) {
//       const order = event.json();                  // bad JSON -> Permanent
//       if (!("id" in order)) throw new Permanent("order has no id");
//       info(`order ${order.id} on ${event.subject}`);
//       publishJson("orders.accepted", { id: order.id }); // sent only if handle returns
//     }
//
// Return normally and the event is done: its publishes are sent and it is
// acknowledged. Throw `Retryable` and the host retries it later
// (`event.attempt` grows); throw `Permanent` and it is dead-lettered without
// retry. Any other exception traps the instance: the host counts it as a
// retryable failure and records the message (stderr) in the dead letter.
//
// `plugin-sdk/js/build.sh DIR` builds the folder into NAME.wasm with
// componentize-js; `import ... from "sluice"` resolves to this file. The
// helpers mirror the Rust SDK (plugin-sdk/src/lib.rs); `publishJson` writes
// the bytes the Rust SDK's `publish_json` writes for a serde_json::Value.
//
// Contract 0.2.0 capabilities: `config.get/require`, `state.get/set/cas/
// delete/listKeys`, `request(subject, payload, {timeoutMs, headers})` and
// `idempotencyKey()` (see the bottom of this file and docs/writing-plugins.md).
//
// Contract imports live in ./contract.js (one place per contract version).

import {
  hostConfigGet,
  hostLog,
  hostPublish,
  hostRequest,
  hostStateCas,
  hostStateDelete,
  hostStateGet,
  hostStateListKeys,
  hostStateSet,
  LEVELS,
} from "./contract.js";
import { dumps, float, JsonFloat } from "./json.js";

export { dumps as jsonBytes, float, JsonFloat, LEVELS };

/** A transient failure: the host retries the event per its retry policy. */
export class Retryable extends Error {
  /**
   * @param {string} message
   * @param {number | bigint | undefined} retryAfterMs suggested delay before the next attempt
   */
  constructor(message, retryAfterMs = undefined) {
    super(String(message));
    this.name = "Retryable";
    if (retryAfterMs !== undefined && retryAfterMs !== null) {
      const ms = BigInt(retryAfterMs);
      if (ms < 0n) throw new RangeError(`retryAfterMs must not be negative, got ${retryAfterMs}`);
      this.retryAfterMs = ms;
    }
  }
}

/** The event can never succeed: dead-letter it without retrying. */
export class Permanent extends Error {
  /** @param {string} message */
  constructor(message) {
    super(String(message));
    this.name = "Permanent";
  }
}

const REFUSED = {
  "not-granted": "publish not granted",
  "invalid-subject": "invalid publish",
  "limit-exceeded": "publish limit exceeded",
};

/**
 * The host refused a publish. A `Retryable`, so leaving it uncaught fails the
 * event as retryable (like `?` in the Rust SDK). `kind` is "not-granted",
 * "invalid-subject" or "limit-exceeded".
 */
export class PublishRefused extends Retryable {
  constructor(kind, detail) {
    super(`${REFUSED[kind] ?? "publish refused"}: ${detail}`);
    this.name = "PublishRefused";
    this.kind = kind;
    this.detail = detail;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/** One event routed to the plugin, with helpers. */
export class Event {
  constructor(raw) {
    /** @type {string} */ this.subject = raw.subject;
    /** @type {Uint8Array} */ this.payload = raw.payload;
    /** @type {{name: string, value: string}[]} */ this.headers = raw.headers;
    /** @type {string} */ this.idempotencyKey = raw.idempotencyKey;
    /** @type {number} */ this.attempt = raw.attempt;
    /** stream, sequence (bigint), publishedAtMs (bigint), replyTo; undefined when absent */
    this.delivery = raw.delivery;
  }

  /** The first value of header `name` (case-sensitive), or undefined. */
  header(name) {
    const h = this.headers.find((h) => h.name === name);
    return h === undefined ? undefined : h.value;
  }

  /** Every value of header `name`, in order. */
  headerAll(name) {
    return this.headers.filter((h) => h.name === name).map((h) => h.value);
  }

  /** The payload as UTF-8 text; throws Permanent if it is not. */
  text() {
    try {
      return utf8.decode(this.payload);
    } catch (e) {
      throw new Permanent(`payload is not UTF-8: ${e.message}`);
    }
  }

  /** The payload parsed as JSON; throws Permanent if it is not. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Permanent(`payload is not valid JSON: ${e.message}`);
    }
  }
}

function headerList(headers) {
  if (headers === undefined || headers === null) return [];
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  return pairs.map(([name, value]) => ({ name: String(name), value: String(value) }));
}

/**
 * Queue a message for `subject`; it is sent only if the handler returns.
 * `payload` is a Uint8Array or a string (sent as UTF-8); `headers` an object
 * or a list of [name, value] pairs. Throws PublishRefused when refused.
 */
export function publish(subject, payload, headers = undefined) {
  const bytes = typeof payload === "string" ? encoder.encode(payload) : payload;
  const refused = hostPublish(String(subject), bytes, headerList(headers));
  if (refused !== undefined) throw new PublishRefused(refused.tag, refused.val);
}

/**
 * Answer the request `event` carries: queue `payload` for its reply subject,
 * sent (like every publish) only if the handler returns. No grant is needed.
 * Throws Permanent if the event is not a request.
 */
export function reply(event, payload) {
  const to = event.delivery.replyTo;
  if (!to) throw new Permanent("cannot reply: the event is not a request (it has no reply subject)");
  publish(to, payload);
}

/**
 * Encode `value` as JSON (the bytes the Rust SDK writes: sorted keys, compact)
 * and publish it with `Content-Type: application/json`. Wrap a number in
 * `float(x)` to write it as a float (`6.0`) when it is integral.
 */
export function publishJson(subject, value, headers = undefined) {
  let body;
  try {
    body = dumps(value);
  } catch (e) {
    throw new Permanent(`cannot encode JSON: ${e.message}`);
  }
  publish(subject, body, [["Content-Type", "application/json"], ...headerList(headers).map((h) => [h.name, h.value])]);
}

/** Emit a log record; `fields` is an object of structured key/values. */
export function log(level, message, fields = {}) {
  if (!LEVELS.includes(level)) {
    throw new RangeError(`unknown log level ${level}; use one of ${LEVELS.join(", ")}`);
  }
  hostLog(level, String(message), Object.entries(fields).map(([key, value]) => ({ key, value: String(value) })));
}

export const trace = (message, fields) => log("trace", message, fields);
export const debug = (message, fields) => log("debug", message, fields);
export const info = (message, fields) => log("info", message, fields);
export const warn = (message, fields) => log("warn", message, fields);
export const error = (message, fields) => log("error", message, fields);

// ---- contract 0.2.0 capabilities: config, state, request, idempotency key.
// A refusal throws a Retryable or a Permanent exactly where the Rust SDK's `?`
// gives a retryable or permanent HandlerError, so leaving it uncaught fails
// the event the same way.

let currentKey;

/** The idempotency key of the event being handled; undefined outside one. */
export function idempotencyKey() {
  return currentKey;
}

/** The plugin's `[config]` table (manifest, operator overrides, secrets). */
export const config = {
  /** The value of `key`, or undefined when it is not set. */
  get(key) {
    return hostConfigGet(String(key));
  },
  /** The value of `key`; throws Permanent naming the key when it is not set. */
  require(key) {
    const value = config.get(key);
    if (value === undefined) {
      throw new Permanent(`config key '${key}' is not set: add it to the plugin's [config] table`);
    }
    return value;
  },
};

const STATE_PREFIX = {
  unavailable: "state unavailable",
  "not-granted": "state not granted",
  "invalid-key": "invalid state key",
  "limit-exceeded": "state limit exceeded",
};

/** The state store could not be reached: retry the event later (a Retryable). */
export class StateUnavailable extends Retryable {
  constructor(kind, detail) {
    super(`${STATE_PREFIX[kind] ?? "state unavailable"}: ${detail}`);
    this.name = "StateUnavailable";
    this.kind = kind;
    this.detail = detail;
  }
}

/** The state call is not allowed (not granted, bad key, limit): a Permanent. */
export class StateRefused extends Permanent {
  constructor(kind, detail) {
    super(`${STATE_PREFIX[kind] ?? "state refused"}: ${detail}`);
    this.name = "StateRefused";
    this.kind = kind;
    this.detail = detail;
  }
}

function stateResult(r) {
  if (r.err === undefined) return r.ok;
  const { tag, val } = r.err;
  throw tag === "unavailable" ? new StateUnavailable(tag, val) : new StateRefused(tag, val);
}

function toBytes(value) {
  return typeof value === "string" ? encoder.encode(value) : value;
}

function optionalU64(name, ms) {
  if (ms === undefined || ms === null) return undefined;
  const v = BigInt(ms);
  if (v < 0n) throw new RangeError(`${name} must not be negative, got ${ms}`);
  return v;
}

/** The plugin's key/value state (needs `state = true` in the manifest). */
export const state = {
  /** `{value: Uint8Array, revision: bigint}` under `key`, or null. */
  get(key) {
    const e = stateResult(hostStateGet(String(key)));
    return e === undefined || e === null ? null : { value: e.value, revision: e.revision };
  },
  /** Store `value` (bytes or a string, as UTF-8) under `key` at commit. */
  set(key, value, { ttlMs } = {}) {
    stateResult(hostStateSet(String(key), toBytes(value), optionalU64("ttlMs", ttlMs)));
  },
  /** Store `value` at commit only if `key` is then still at `revision` (0: absent). */
  cas(key, revision, value, { ttlMs } = {}) {
    stateResult(
      hostStateCas(String(key), optionalU64("revision", revision), toBytes(value), optionalU64("ttlMs", ttlMs)),
    );
  },
  /** Delete `key` at commit. */
  delete(key) {
    stateResult(hostStateDelete(String(key)));
  },
  /** The keys starting with `prefix`, sorted. */
  listKeys(prefix = "") {
    return stateResult(hostStateListKeys(String(prefix)));
  },
};

/** Nobody answered in time, or the connection failed: a Retryable. */
export class RequestFailed extends Retryable {
  constructor(kind, detail) {
    super(`request failed: ${detail}`);
    this.name = "RequestFailed";
    this.kind = kind;
    this.detail = detail;
  }
}

/** The request is not allowed (not granted, bad subject, limit): a Permanent. */
export class RequestRefused extends Permanent {
  constructor(kind, detail) {
    super(`request refused: ${detail}`);
    this.name = "RequestRefused";
    this.kind = kind;
    this.detail = detail;
  }
}

/**
 * Send `payload` to `subject` (granted by the manifest's `request` list) and
 * wait for the first answer, at most `timeoutMs` (default and cap: the
 * attempt's time limit). Sent at once, not at commit. Returns
 * `{payload: Uint8Array, headers: {name, value}[]}`.
 */
export function request(subject, payload, { timeoutMs, headers } = {}) {
  const r = hostRequest(String(subject), toBytes(payload), headerList(headers), optionalU64("timeoutMs", timeoutMs));
  if (r.err === undefined) return { payload: r.ok.payload, headers: r.ok.headers };
  const { tag, val } = r.err;
  if (tag === "no-responders" || tag === "timed-out" || tag === "unavailable") throw new RequestFailed(tag, val);
  throw new RequestRefused(tag, val);
}

/**
 * Run `handle` on one raw contract event; returns the contract's error
 * variant, or undefined when the handler succeeded. Other exceptions escape.
 * Used by the generated entry module; not part of the author-facing API.
 */
export function dispatch(handle, raw) {
  currentKey = raw.idempotencyKey;
  try {
    handle(new Event(raw));
    return undefined;
  } catch (e) {
    if (e instanceof Retryable) {
      return { tag: "retryable", val: { message: e.message, retryAfterMs: e.retryAfterMs } };
    }
    if (e instanceof Permanent) return { tag: "permanent", val: e.message };
    throw e;
  } finally {
    currentKey = undefined;
  }
}
