// `noop` in JavaScript: does nothing. The benchmarks' per-event floor of a
// componentize-js plugin (plugins/noop is the Rust one).
export function handle(_event) {}
