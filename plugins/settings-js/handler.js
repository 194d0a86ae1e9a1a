// settings-js: the JavaScript twin of plugins/settings and
// plugins/settings-py (the configuration example). The payload lists keys
// (comma-separated); the plugin reads each with `config.get` and publishes
// `{"key": value-or-null, ...}` to `settings.out` (the Rust plugin's JSON
// bytes). It logs how many keys it read, never their values.
import { config, info, publishJson } from "sluice";

export function handle(event) {
  const values = {};
  for (const key of event.text().split(",")) {
    if (key === "") continue;
    values[key] = config.get(key) ?? null;
  }
  info(`settings: read ${Object.keys(values).length} keys`);
  publishJson("settings.out", values);
}
