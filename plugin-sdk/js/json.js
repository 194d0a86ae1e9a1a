// JSON the way the Rust SDK (serde_json) writes it, so a JS plugin and a Rust
// one publish the same bytes for the same value: compact, object keys sorted
// by code point (serde_json's Value map is ordered), no ASCII escaping,
// non-finite numbers as null, floats in the shortest round-trip digits, in
// fixed notation for decimal exponents -5 to 15 (`6.0`, `0.00001`), else
// `1e-7`, `1.5e+20` (as serde_json's formatter, the zmij crate, writes them).
//
// JS numbers do not say whether `3` was written `3` or `3.0`: integral numbers
// are written as integers unless wrapped with `float(x)`. BigInts are integers.

/** A number to be written as a float even when integral (`6.0`). */
export class JsonFloat {
  constructor(value) {
    this.value = Number(value);
  }
  valueOf() {
    return this.value;
  }
}

/** Mark `x` to be written as a float. */
export const float = (x) => new JsonFloat(x);

/** `x` as serde_json writes an f64. */
export function formatFloat(x) {
  if (!Number.isFinite(x)) return "null";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, exp = "0"] = Math.abs(x).toExponential().split("e");
  const digits = mantissa.replace(".", "").replace(/0+$/, "") || "0";
  const kk = Number(exp) + 1; // position of the decimal point
  const n = digits.length;
  const k = kk - n;
  let out;
  if (k >= 0 && kk <= 16) out = digits + "0".repeat(k) + ".0";
  else if (kk > 0 && kk <= 16) out = digits.slice(0, kk) + "." + digits.slice(kk);
  else if (kk > -5 && kk <= 0) out = "0." + "0".repeat(-kk) + digits;
  else {
    const e = kk - 1;
    const exp = `e${e < 0 ? "-" : "+"}${Math.abs(e)}`;
    out = n === 1 ? digits + exp : `${digits[0]}.${digits.slice(1)}${exp}`;
  }
  return sign + out;
}

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;

function compareCodePoints(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function encode(value, out) {
  if (value === null || value === undefined) out.push("null");
  else if (value === true) out.push("true");
  else if (value === false) out.push("false");
  else if (value instanceof JsonFloat) out.push(formatFloat(value.value));
  else if (typeof value === "number") {
    out.push(Number.isSafeInteger(value) ? String(value) : formatFloat(value));
  } else if (typeof value === "bigint") {
    out.push(value >= I64_MIN && value <= U64_MAX ? String(value) : formatFloat(Number(value)));
  } else if (typeof value === "string") out.push(JSON.stringify(value));
  else if (Array.isArray(value)) {
    out.push("[");
    value.forEach((v, i) => {
      if (i) out.push(",");
      encode(v, out);
    });
    out.push("]");
  } else if (typeof value === "object") {
    if (typeof value.toJSON === "function") return encode(value.toJSON(), out);
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort(compareCodePoints);
    out.push("{");
    keys.forEach((k, i) => {
      if (i) out.push(",");
      out.push(JSON.stringify(k), ":");
      encode(value[k], out);
    });
    out.push("}");
  } else throw new TypeError(`cannot encode ${typeof value} as JSON`);
}

/** Encode `value` as compact JSON bytes, byte-identical to serde_json. */
export function dumps(value) {
  const out = [];
  encode(value, out);
  return new TextEncoder().encode(out.join(""));
}
