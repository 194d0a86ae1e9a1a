// The one place that names the contract's imports (sluice:plugin@0.2.0).
// A newer contract version adds its imports here and its helpers in sluice.js.
import { log as witLog } from "sluice:plugin/logging@0.2.0";
import { publish as witPublish } from "sluice:plugin/publisher@0.2.0";
import { get as witConfigGet } from "sluice:plugin/config@0.2.0";
import * as witState from "sluice:plugin/state@0.2.0";
import { request as witRequest } from "sluice:plugin/requester@0.2.0";

export const CONTRACT_VERSION = "0.2.0";

/** Log levels, lowest first. */
export const LEVELS = ["trace", "debug", "info", "warn", "error"];

export function hostLog(level, message, fields) {
  witLog(level, message, fields);
}

/**
 * Call `f`; returns {ok: value} or {err: variant {tag, val}} when the import
 * returned the `err` case of its result. Other exceptions escape.
 */
function call(f) {
  try {
    return { ok: f() };
  } catch (e) {
    // componentize-js throws the `err` case of a result as e.payload.
    const refusal = e !== null && typeof e === "object" && "payload" in e ? e.payload : e;
    if (refusal && typeof refusal.tag === "string") return { err: refusal };
    throw e;
  }
}

/** Returns undefined when queued, else the refusal variant {tag, val}. */
export function hostPublish(subject, payload, headers) {
  return call(() => witPublish(subject, payload, headers)).err;
}

/** The config value of `key`, or undefined. */
export function hostConfigGet(key) {
  const value = witConfigGet(key);
  return value === null ? undefined : value;
}

/** state.get: {ok: {value, revision} | undefined} or {err}. */
export const hostStateGet = (key) => call(() => witState.get(key));
export const hostStateSet = (key, value, ttlMs) => call(() => witState.set(key, value, ttlMs));
export const hostStateCas = (key, revision, value, ttlMs) =>
  call(() => witState.compareAndSwap(key, revision, value, ttlMs));
export const hostStateDelete = (key) => call(() => witState.delete(key));
export const hostStateListKeys = (prefix) => call(() => witState.listKeys(prefix));

/** requester.request: {ok: {payload, headers}} or {err}. */
export const hostRequest = (subject, payload, headers, timeoutMs) =>
  call(() => witRequest(subject, payload, headers, timeoutMs));

// Outbound HTTP: the world's own wasi:http 0.2.12 imports (componentize-js's
// built-in fetch is disabled in build.mjs: it targets another wasi:http
// version). sluice.js's `http` helpers are the only users.
import { handle as witHttpHandle } from "wasi:http/outgoing-handler@0.2.12";
import {
  Fields as WitFields,
  IncomingBody as WitIncomingBody,
  OutgoingBody as WitOutgoingBody,
  OutgoingRequest as WitOutgoingRequest,
  RequestOptions as WitRequestOptions,
  httpErrorCode as witHttpErrorCode,
} from "wasi:http/types@0.2.12";

/** The generated wasi:http bindings (resources are classes; a result's `err` is thrown as e.payload). */
export const wasiHttp = {
  handle: witHttpHandle,
  Fields: WitFields,
  IncomingBody: WitIncomingBody,
  OutgoingBody: WitOutgoingBody,
  OutgoingRequest: WitOutgoingRequest,
  RequestOptions: WitRequestOptions,
  httpErrorCode: witHttpErrorCode,
};

/** The `err` case thrown by a generated import (its payload), else rethrow. */
export function errPayload(e) {
  if (e !== null && typeof e === "object" && "payload" in e) return e.payload;
  throw e;
}
