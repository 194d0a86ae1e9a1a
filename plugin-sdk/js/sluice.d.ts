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
