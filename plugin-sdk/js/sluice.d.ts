// Types of the sluice JavaScript SDK (sluice.js), for editors and `checkJs`.

/** One NATS header. Names are case-sensitive and may repeat. */
export interface Header {
  name: string;
  value: string;
}

/** Where the event came from; fields are undefined when not applicable. */
export interface Delivery {
  stream?: string;
  sequence?: bigint;
  publishedAtMs?: bigint;
  replyTo?: string;
}

/** One event routed to the plugin. */
export class Event {
  readonly subject: string;
  readonly payload: Uint8Array;
  readonly headers: Header[];
  readonly idempotencyKey: string;
  readonly attempt: number;
  readonly delivery: Delivery;
  /** The first value of header `name`, or undefined. */
  header(name: string): string | undefined;
  /** Every value of header `name`, in order. */
  headerAll(name: string): string[];
  /** The payload as UTF-8 text; throws Permanent if it is not. */
  text(): string;
  /** The payload parsed as JSON; throws Permanent if it is not. */
  json(): any;
}

/** A transient failure: the host retries the event. */
export class Retryable extends Error {
  constructor(message: string, retryAfterMs?: number | bigint);
  readonly retryAfterMs?: bigint;
}

/** The event can never succeed: dead-letter it without retrying. */
export class Permanent extends Error {
  constructor(message: string);
}

/** The host refused a publish (a Retryable). */
export class PublishRefused extends Retryable {
  readonly kind: "not-granted" | "invalid-subject" | "limit-exceeded";
  readonly detail: string;
}

/** Headers as an object or a list of [name, value] pairs. */
export type Headers = Record<string, string> | [string, string][];

/** Queue a message; sent only if the handler returns. Throws PublishRefused. */
export function publish(subject: string, payload: Uint8Array | string, headers?: Headers): void;
/** Answer the request `event` carries (its reply subject); Permanent if it is not a request. */
export function reply(event: Event, payload: Uint8Array | string): void;
/** Publish `value` as JSON (the Rust SDK's bytes) with Content-Type application/json. */
export function publishJson(subject: string, value: unknown, headers?: Headers): void;

export type Level = "trace" | "debug" | "info" | "warn" | "error";
export const LEVELS: Level[];
/** Emit a log record with structured fields. */
export function log(level: Level, message: string, fields?: Record<string, unknown>): void;
export function trace(message: string, fields?: Record<string, unknown>): void;
export function debug(message: string, fields?: Record<string, unknown>): void;
export function info(message: string, fields?: Record<string, unknown>): void;
export function warn(message: string, fields?: Record<string, unknown>): void;
export function error(message: string, fields?: Record<string, unknown>): void;

/** A number written as a float even when integral (`6.0`). */
export class JsonFloat {
  constructor(value: number);
  readonly value: number;
}
export function float(x: number): JsonFloat;
/** Encode `value` as JSON bytes, byte-identical to serde_json. */
export function jsonBytes(value: unknown): Uint8Array;

// ---- contract 0.2.0 capabilities. A refusal throws a Retryable or a
// Permanent where the Rust SDK's `?` gives a retryable or permanent error.

/** The plugin's `[config]` table (manifest, operator overrides, secrets). */
export const config: {
  /** The value of `key`, or undefined when it is not set. */
  get(key: string): string | undefined;
  /** The value of `key`; throws Permanent naming the key when it is not set. */
  require(key: string): string;
};

/** A stored value and the revision to pass to `state.cas`. */
export interface Entry {
  value: Uint8Array;
  revision: bigint;
}

export type StateErrorKind = "not-granted" | "invalid-key" | "limit-exceeded" | "unavailable";

/** The state store could not be reached (kind "unavailable"): a Retryable. */
export class StateUnavailable extends Retryable {
  readonly kind: StateErrorKind;
  readonly detail: string;
}

/** The state call is not allowed (not granted, bad key, limit): a Permanent. */
export class StateRefused extends Permanent {
  readonly kind: StateErrorKind;
  readonly detail: string;
}

/** The plugin's key/value state (needs `state = true` in the manifest). Writes commit only if `handle` returns. */
export const state: {
  /** The entry under `key`, or null. */
  get(key: string): Entry | null;
  /** Store `value` (a string is stored as UTF-8) under `key`. */
  set(key: string, value: Uint8Array | string, options?: { ttlMs?: number | bigint }): void;
  /** Store `value` only if `key` is then still at `revision` (0: absent). */
  cas(key: string, revision: number | bigint, value: Uint8Array | string, options?: { ttlMs?: number | bigint }): void;
  /** Delete `key`. */
  delete(key: string): void;
  /** The keys starting with `prefix`, sorted. */
  listKeys(prefix?: string): string[];
};

export type RequestErrorKind =
  | "not-granted"
  | "invalid-subject"
  | "no-responders"
  | "timed-out"
  | "limit-exceeded"
  | "unavailable";

/** No responders, timed out or unavailable: a Retryable. */
export class RequestFailed extends Retryable {
  readonly kind: RequestErrorKind;
  readonly detail: string;
}

/** Not granted, bad subject or limit: a Permanent. */
export class RequestRefused extends Permanent {
  readonly kind: RequestErrorKind;
  readonly detail: string;
}

/** The first answer to a request. */
export interface Response {
  payload: Uint8Array;
  headers: Header[];
}

/**
 * Send `payload` to `subject` (granted by the manifest's `request` list) and
 * wait for the first answer; sent at once, not at commit.
 */
export function request(
  subject: string,
  payload: Uint8Array | string,
  options?: { timeoutMs?: number | bigint; headers?: Headers },
): Response;

/** The idempotency key of the event being handled; undefined outside one. */
export function idempotencyKey(): string | undefined;

// ---- outbound HTTP (wasi:http/outgoing-handler@0.2.12), the twin of the
// Rust SDK's `sluice_sdk::http`. The host reaches only origins the manifest's
// `http` list grants and the operator allows; every request carries the
// event's idempotency key as `Idempotency-Key` unless it opts out.

/** The header carrying the event's idempotency key. */
export const IDEMPOTENCY_KEY: "Idempotency-Key";

export type HttpErrorKind = "refused" | "invalid" | "timeout" | "too-large" | "transport" | "decode";

/** A timeout or a transport failure (kind "timeout" or "transport"): a Retryable. */
export class HttpRetryable extends Retryable {
  readonly kind: HttpErrorKind;
  readonly detail: string;
  readonly isRetryable: true;
}

/** Refused by the host, invalid, too large or undecodable: a Permanent. */
export class HttpPermanent extends Permanent {
  readonly kind: HttpErrorKind;
  readonly detail: string;
  readonly isRetryable: false;
}

/** `e instanceof HttpError` holds for HttpRetryable and HttpPermanent. */
export type HttpError = HttpRetryable | HttpPermanent;
export const HttpError: { [Symbol.hasInstance](value: unknown): value is HttpError };

/** A complete response. */
export class HttpResponse {
  readonly status: number;
  /** In the order received, names in lower case. */
  readonly headers: Header[];
  readonly body: Uint8Array;
  /** Whether the status is 2xx. */
  readonly isSuccess: boolean;
  /** The first value of header `name` (case-insensitive), or undefined. */
  header(name: string): string | undefined;
  /** The body as UTF-8 text; throws HttpPermanent (kind "decode") if it is not. */
  text(): string;
  /** The body parsed as JSON; throws HttpPermanent (kind "decode") if it is not. */
  json(): any;
}

export interface HttpRequestOptions {
  headers?: Headers;
  /** The body; a string is sent as UTF-8. */
  body?: Uint8Array | string;
  /** A JSON body (the Rust SDK's bytes), with Content-Type application/json unless set. */
  json?: unknown;
  /** Give up after this long (the attempt's time limit applies anyway). */
  timeoutMs?: number;
  /** false: do not send the event's idempotency key. */
  idempotencyKey?: boolean;
}

/** A request being built; setters return the request, `send()` sends it. */
export class HttpRequest {
  constructor(method: string, url: string, options?: HttpRequestOptions);
  readonly method: string;
  readonly url: string;
  readonly headers: [string, string][];
  /** Add a header (names may repeat); an explicit Idempotency-Key replaces the event's. */
  header(name: string, value: string): this;
  body(body: Uint8Array | string): this;
  json(value: unknown): this;
  withoutIdempotencyKey(): this;
  timeout(ms: number): this;
  /** Send and read the whole response; throws HttpError when there is none (any status is a response). */
  send(): HttpResponse;
}

/** Outbound HTTP helpers. */
export const http: {
  IDEMPOTENCY_KEY: "Idempotency-Key";
  Request: typeof HttpRequest;
  Response: typeof HttpResponse;
  HttpError: typeof HttpError;
  HttpRetryable: typeof HttpRetryable;
  HttpPermanent: typeof HttpPermanent;
  /** `GET url`. */
  get(url: string, options?: { headers?: Headers; timeoutMs?: number }): HttpResponse;
  /** `POST url` with `value` as the JSON body. */
  postJson(url: string, value: unknown, options?: { headers?: Headers; timeoutMs?: number }): HttpResponse;
};

/** `url` split into [scheme, authority, pathWithQuery]; throws HttpPermanent ("invalid") when it is not http(s) with a host. */
export function splitUrl(url: string): [string, string, string];
