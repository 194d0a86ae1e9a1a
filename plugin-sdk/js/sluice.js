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
// delete/listKeys`, `request(subject, payload, {timeoutMs, headers})`,
// `idempotencyKey()` and outbound HTTP (`http.get`, `http.postJson`,
// `new http.Request(...)`; see the bottom of this file and
// docs/writing-plugins.md).
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
  errPayload,
  wasiHttp,
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
      throw new Permanent(
        `configuration key \`${key}\` is not set: add it to the manifest's [config] or the operator's plugin_config / plugin_secrets`,
      );
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

// ---- outbound HTTP over the world's wasi:http/outgoing-handler@0.2.12: the
// twin of the Rust SDK's `sluice_sdk::http` (plugin-sdk/src/http.rs). The host
// lets a request through only to an origin the manifest's `http` list grants
// and the operator allows (never a private or loopback address unless the
// operator says so), within the attempt's time limit, a response-size limit
// and a per-event request count. A request is sent at once, so a retried
// event sends it again: every request carries the event's idempotency key as
// `Idempotency-Key` unless the request opts out.

/** The header carrying the event's idempotency key. */
export const IDEMPOTENCY_KEY = "Idempotency-Key";

const HTTP_KINDS = {
  refused: "HTTP request refused",
  invalid: "invalid HTTP request",
  timeout: "HTTP request timed out",
  "too-large": "HTTP response too large",
  transport: "HTTP request failed",
  decode: "cannot decode HTTP response",
};
const HTTP_RETRYABLE = ["timeout", "transport"];
const WRITE_CHUNK = 4096;
const READ_CHUNK = 64n * 1024n;
const DISPOSE = Symbol.dispose || Symbol.for("dispose");

/** A timeout or a transport failure: a Retryable (kind "timeout" or "transport"). */
export class HttpRetryable extends Retryable {
  constructor(kind, detail) {
    super(`${HTTP_KINDS[kind] ?? "HTTP request failed"}: ${detail}`);
    this.name = "HttpRetryable";
    this.kind = kind;
    this.detail = String(detail);
  }
  get isRetryable() {
    return true;
  }
}

/**
 * Refused by the host ("refused": origin not granted, private address,
 * request limit), "invalid", "too-large" or "decode": a Permanent.
 */
export class HttpPermanent extends Permanent {
  constructor(kind, detail) {
    super(`${HTTP_KINDS[kind] ?? "HTTP request failed"}: ${detail}`);
    this.name = "HttpPermanent";
    this.kind = kind;
    this.detail = String(detail);
  }
  get isRetryable() {
    return false;
  }
}

/**
 * Why a request got no (usable) response: `e instanceof HttpError` holds for
 * both HttpRetryable and HttpPermanent; `e.kind`, `e.detail`, `e.isRetryable`.
 */
export class HttpError {
  static [Symbol.hasInstance](value) {
    return value instanceof HttpRetryable || value instanceof HttpPermanent;
  }
}

function httpError(kind, detail) {
  return HTTP_RETRYABLE.includes(kind) ? new HttpRetryable(kind, detail) : new HttpPermanent(kind, detail);
}

/** A complete response: `status`, `headers` ({name, value}, names in lower case), `body` (Uint8Array). */
export class HttpResponse {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
  /** Whether the status is 2xx. */
  get isSuccess() {
    return this.status >= 200 && this.status < 300;
  }
  /** The first value of header `name` (case-insensitive), or undefined. */
  header(name) {
    const lower = String(name).toLowerCase();
    const h = this.headers.find((h) => h.name.toLowerCase() === lower);
    return h === undefined ? undefined : h.value;
  }
  /** The body as UTF-8 text; throws HttpPermanent (kind "decode") if it is not. */
  text() {
    try {
      return utf8.decode(this.body);
    } catch (e) {
      throw httpError("decode", `body is not UTF-8: ${e.message}`);
    }
  }
  /** The body parsed as JSON; throws HttpPermanent (kind "decode") if it is not. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw httpError("decode", `body is not the expected JSON: ${e.message}`);
    }
  }
}

/**
 * A request being built; `send()` sends it. Setters return the request, so
 * calls chain; the options are the same settings:
 *
 *     new http.Request("PUT", url).header("Authorization", `Bearer ${t}`).json(item).send();
 *     new http.Request("DELETE", url, { headers: { "X-Why": "gone" }, timeoutMs: 2000 }).send();
 */
export class HttpRequest {
  constructor(method, url, { headers, body, json, timeoutMs, idempotencyKey = true } = {}) {
    this.method = String(method);
    this.url = String(url);
    this.headers = headerList(headers).map((h) => [h.name, h.value]);
    this._body = new Uint8Array(0);
    this._idempotencyKey = idempotencyKey !== false;
    this._timeoutMs = undefined;
    if (body !== undefined && body !== null) this.body(body);
    if (json !== undefined) this.json(json);
    if (timeoutMs !== undefined && timeoutMs !== null) this.timeout(timeoutMs);
  }
  /** Add a header (names may repeat); an explicit Idempotency-Key replaces the event's. */
  header(name, value) {
    this.headers.push([String(name), String(value)]);
    return this;
  }
  /** Set the body (a string is sent as UTF-8). */
  body(body) {
    this._body = toBytes(body);
    return this;
  }
  /** Set the body to `value` as JSON (the Rust SDK's bytes), with Content-Type application/json unless set. */
  json(value) {
    try {
      this._body = dumps(value);
    } catch (e) {
      throw httpError("invalid", `cannot encode the JSON body: ${e.message}`);
    }
    if (!this._has("content-type")) this.headers.push(["Content-Type", "application/json"]);
    return this;
  }
  /** Do not send the event's idempotency key. */
  withoutIdempotencyKey() {
    this._idempotencyKey = false;
    return this;
  }
  /** Give up after `ms` milliseconds (the attempt's time limit applies anyway). */
  timeout(ms) {
    const n = Number(ms);
    if (!(n >= 0)) throw new RangeError(`timeout must not be negative, got ${ms}`);
    this._timeoutMs = n;
    return this;
  }
  _has(name) {
    const lower = name.toLowerCase();
    return this.headers.some(([n]) => n.toLowerCase() === lower);
  }
  /** Send the request and read the whole response; throws HttpError when there is none (any status is a response). */
  send() {
    const headers = [...this.headers];
    if (this._idempotencyKey && !this._has(IDEMPOTENCY_KEY) && currentKey) {
      headers.push([IDEMPOTENCY_KEY, currentKey]);
    }
    return httpSend(this.method, this.url, headers, this._body, this._timeoutMs);
  }
}

/** `url` split into [scheme, authority, pathWithQuery]; HttpPermanent ("invalid") when it is not http(s) with a host. */
export function splitUrl(url) {
  const invalid = (why) => httpError("invalid", `\`${url}\` is not a valid URL: ${why}`);
  const at = url.indexOf("://");
  if (at < 0) throw invalid("write scheme://host[:port]/path");
  const scheme = url.slice(0, at).toLowerCase();
  if (scheme !== "http" && scheme !== "https") throw invalid("the scheme must be http or https");
  const rest = url.slice(at + 3);
  const end = rest.search(/[/?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  const path = end < 0 ? "" : rest.slice(end).split("#")[0];
  if (authority === "") throw invalid("no host");
  if (authority.includes("@")) throw invalid("credentials in the URL are not supported; send a header");
  return [scheme, authority, path];
}

const METHODS = ["get", "head", "post", "put", "patch", "delete", "options"];

function drop(resource) {
  if (resource !== undefined && resource !== null) resource[DISPOSE]();
}

/** The Rust SDK's `{code:?}` name of a wasi:http error-code tag ("HTTP-request-denied" -> "HttpRequestDenied"). */
function codeName(tag) {
  return String(tag)
    .split("-")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase())
    .join("");
}

function debugCode(code) {
  const name = `ErrorCode::${codeName(code.tag)}`;
  if (!("val" in code)) return name;
  const v = code.val;
  return `${name}(${typeof v === "object" && v !== null ? JSON.stringify(v, (_, x) => (typeof x === "bigint" ? String(x) : x)) : v})`;
}

/** A readable error for what wasi:http reported about `url` (the Rust SDK's texts). */
function errorOf(url, code) {
  const name = codeName(code.tag);
  switch (name) {
    case "HttpRequestDenied":
      return httpError(
        "refused",
        `\`${url}\`: the host does not grant this origin to the plugin (the manifest's \`http\` list and the operator's \`http_allow\` decide)`,
      );
    case "DestinationIpProhibited":
      return httpError(
        "refused",
        `\`${url}\` resolves to a private, loopback or link-local address, which the operator does not allow (\`http_allow_private\`)`,
      );
    case "ConnectionLimitReached":
      return httpError(
        "refused",
        `\`${url}\`: the plugin's per-event HTTP request limit is reached (\`max_http_requests\`)`,
      );
    case "HttpResponseBodySize":
      return httpError(
        "too-large",
        code.val !== undefined && code.val !== null
          ? `the response of \`${url}\` is larger than the plugin's limit of ${code.val} bytes (\`max_http_response\`)`
          : `the response of \`${url}\` is larger than the plugin's limit`,
      );
    case "ConnectionTimeout":
    case "ConnectionReadTimeout":
    case "ConnectionWriteTimeout":
    case "HttpResponseTimeout":
    case "DnsTimeout":
      return httpError(
        "timeout",
        `\`${url}\` did not answer in time (the attempt's time limit cuts every request): ${debugCode(code)}`,
      );
    case "HttpRequestUriInvalid":
    case "HttpRequestMethodInvalid":
      return httpError("invalid", `\`${url}\`: ${debugCode(code)}`);
    case "InternalError":
      if (code.val !== undefined && code.val !== null) return httpError("transport", `\`${url}\`: ${code.val}`);
      return httpError("transport", `\`${url}\`: ${debugCode(code)}`);
    default:
      return httpError("transport", `\`${url}\`: ${debugCode(code)}`);
  }
}

function httpSend(method, url, headers, body, timeoutMs) {
  const w = wasiHttp;
  const [scheme, authority, path] = splitUrl(url);
  const fields = new w.Fields();
  const append = (name, value, what) => {
    try {
      fields.append(name, encoder.encode(value));
    } catch (e) {
      const err = errPayload(e);
      drop(fields);
      throw httpError("invalid", `${what}: HeaderError::${codeName(err && err.tag)}`);
    }
  };
  for (const [name, value] of headers) append(name, value, `header \`${name}\``);
  if (body.length > 0 && !headers.some(([n]) => n.toLowerCase() === "content-length")) {
    append("content-length", String(body.length), "content-length");
  }
  const outgoing = new w.OutgoingRequest(fields); // takes the fields
  const upper = method.toUpperCase();
  const witMethod = METHODS.includes(upper.toLowerCase()) ? { tag: upper.toLowerCase() } : { tag: "other", val: method };
  let outBody;
  try {
    for (const [what, set] of [
      ["the method", () => outgoing.setMethod(witMethod)],
      ["the scheme", () => outgoing.setScheme({ tag: scheme.toUpperCase() })],
      ["the host and port", () => outgoing.setAuthority(authority)],
      ["the path", () => outgoing.setPathWithQuery(path === "" ? "/" : path)],
    ]) {
      try {
        set();
      } catch (e) {
        errPayload(e);
        throw httpError("invalid", `${what} of \`${url}\``);
      }
    }
    try {
      outBody = outgoing.body();
    } catch (e) {
      errPayload(e);
      throw httpError("invalid", "the request body is already taken");
    }
  } catch (e) {
    drop(outBody);
    drop(outgoing);
    throw e;
  }
  let options;
  if (timeoutMs !== undefined) {
    options = new w.RequestOptions();
    const nanos = BigInt(Math.round(timeoutMs)) * 1000000n;
    // Ignored when the host does not support one of them; the attempt's
    // time limit applies anyway.
    for (const set of ["setConnectTimeout", "setFirstByteTimeout", "setBetweenBytesTimeout"]) {
      try {
        options[set](nanos);
      } catch (e) {
        errPayload(e);
      }
    }
  }
  let pending;
  try {
    pending = w.handle(outgoing, options); // takes the request and options
  } catch (e) {
    const code = errPayload(e);
    drop(outBody);
    throw errorOf(url, code);
  }
  let incoming;
  try {
    writeBody(outBody, body);
    try {
      w.OutgoingBody.finish(outBody, undefined); // takes the body
    } catch (e) {
      errPayload(e); // a failed write shows as the response's error below
    }
    outBody = undefined;
    incoming = awaitResponse(url, pending);
  } catch (e) {
    drop(outBody);
    drop(pending);
    throw e;
  }
  try {
    return readResponse(url, incoming);
  } finally {
    drop(incoming);
    drop(pending);
  }
}

function writeBody(outBody, bytes) {
  if (bytes.length === 0) return;
  let stream;
  try {
    stream = outBody.write();
  } catch (e) {
    errPayload(e);
    return;
  }
  try {
    for (let i = 0; i < bytes.length; i += WRITE_CHUNK) {
      try {
        stream.blockingWriteAndFlush(bytes.subarray(i, i + WRITE_CHUNK));
      } catch (e) {
        errPayload(e);
        break;
      }
    }
  } finally {
    drop(stream);
  }
}

function awaitResponse(url, pending) {
  for (;;) {
    const got = pending.get();
    if (got === undefined || got === null) {
      const pollable = pending.subscribe();
      try {
        pollable.block();
      } finally {
        drop(pollable);
      }
      continue;
    }
    if (got.tag === "err") throw httpError("transport", `the response to \`${url}\` was already taken`);
    if (got.val.tag === "err") throw errorOf(url, got.val.val);
    return got.val.val;
  }
}

function readResponse(url, incoming) {
  const w = wasiHttp;
  const status = incoming.status();
  const fields = incoming.headers();
  let headers;
  try {
    headers = fields.entries().map(([name, value]) => ({ name, value: new TextDecoder().decode(value) }));
  } finally {
    drop(fields);
  }
  let body;
  try {
    body = incoming.consume();
  } catch (e) {
    errPayload(e);
    throw httpError("transport", `the body of \`${url}\` was already taken`);
  }
  const chunks = [];
  let size = 0;
  try {
    let stream;
    try {
      stream = body.stream();
    } catch (e) {
      errPayload(e);
      throw httpError("transport", `the body of \`${url}\` was already taken`);
    }
    try {
      for (;;) {
        let chunk;
        try {
          chunk = stream.blockingRead(READ_CHUNK);
        } catch (e) {
          const err = errPayload(e);
          if (err.tag === "closed") break;
          throw streamFailure(url, err.val);
        }
        chunks.push(chunk);
        size += chunk.length;
      }
    } finally {
      drop(stream);
    }
    const trailers = w.IncomingBody.finish(body); // takes the body
    body = undefined;
    drop(trailers);
  } finally {
    drop(body);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new HttpResponse(status, headers, all);
}

function streamFailure(url, ioError) {
  try {
    const code = wasiHttp.httpErrorCode(ioError);
    if (code !== undefined && code !== null) return errorOf(url, code);
    return httpError("transport", `reading the body of \`${url}\` failed: ${ioError.toDebugString()}`);
  } finally {
    drop(ioError);
  }
}

/**
 * Outbound HTTP (contract 0.2.0): `http.get(url, {headers, timeoutMs})`,
 * `http.postJson(url, value, {headers, timeoutMs})`, and
 * `new http.Request(method, url, {headers, body, json, timeoutMs, idempotencyKey})`
 * with `.header() .body() .json() .timeout() .withoutIdempotencyKey() .send()`.
 * A failure throws HttpRetryable (timeout, transport) or HttpPermanent
 * (refused, invalid, too-large, decode), as the Rust SDK's `?` classifies it.
 */
export const http = {
  IDEMPOTENCY_KEY,
  Request: HttpRequest,
  Response: HttpResponse,
  HttpError,
  HttpRetryable,
  HttpPermanent,
  /** `GET url`. */
  get(url, { headers, timeoutMs } = {}) {
    return new HttpRequest("GET", url, { headers, timeoutMs }).send();
  },
  /** `POST url` with `value` as the JSON body. */
  postJson(url, value, { headers, timeoutMs } = {}) {
    return new HttpRequest("POST", url, { headers, timeoutMs, json: value }).send();
  },
};

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
