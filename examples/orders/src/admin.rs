//! The host's admin endpoint as the demo reads it: plugin status (version,
//! breaker, counters) from `/plugins`.

use anyhow::Context;
use serde_json::Value;

use crate::http;

/// `/plugins` of the host whose admin endpoint is `addr` (`IP:PORT`).
pub fn plugins(addr: &str) -> anyhow::Result<Vec<Value>> {
    let response = http::get(&format!("http://{addr}/plugins"))?;
    let value = response.json()?;
    value
        .as_array()
        .cloned()
        .with_context(|| format!("/plugins is not a list: {value}"))
}

/// The status of plugin `name`, if the host has it.
pub fn plugin(addr: &str, name: &str) -> anyhow::Result<Option<Value>> {
    Ok(plugins(addr)?
        .into_iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name)))
}

/// A text field of plugin `name`'s status (`state`, `version`, `breaker`).
pub fn field(addr: &str, name: &str, key: &str) -> Option<String> {
    plugin(addr, name)
        .ok()
        .flatten()
        .and_then(|p| p.get(key).and_then(Value::as_str).map(str::to_string))
}

/// A counter of plugin `name` (`stats.<key>`), 0 if absent.
pub fn stat(addr: &str, name: &str, key: &str) -> u64 {
    plugin(addr, name)
        .ok()
        .flatten()
        .and_then(|p| p.pointer(&format!("/stats/{key}")).and_then(Value::as_u64))
        .unwrap_or(0)
}
