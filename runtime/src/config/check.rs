//! The checks named in the settings table: each turns a merged raw value
//! into the resolved one, or says what is wrong and what to write instead
//! (the caller adds the key). Checks that span several settings (NATS
//! authentication, TLS files) live next to the code that uses them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::value::{KeyValues, OrOff, Show};
use super::{DedupStoreKind, LogFormat};

/// Accepts any value as it is.
pub fn any<T>(value: T) -> Result<T, String> {
    Ok(value)
}

/// NATS server URLs, as the client gets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlList(pub Vec<String>);

impl Show for UrlList {
    /// Comma-joined, passwords masked.
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(
            self.0
                .iter()
                .map(|u| crate::nats::redact_url(u))
                .collect::<Vec<_>>()
                .join(","),
        ))
    }
}

/// A comma-separated list of NATS addresses.
pub fn nats_urls(text: String) -> Result<UrlList, String> {
    let urls: Vec<String> = text
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err("is empty; e.g. nats://127.0.0.1:4222".into());
    }
    for url in &urls {
        validate_nats_url(url)?;
    }
    Ok(UrlList(urls))
}

fn validate_nats_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .or_else(|| url.strip_prefix("ws://"))
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let ok = !host_port.is_empty()
        && !host_port.contains(char::is_whitespace)
        && host_port
            .rsplit_once(':')
            .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .unwrap_or(true);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not a NATS address; use e.g. nats://host:4222"
        ))
    }
}

/// A duration above zero.
pub fn positive_duration(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be greater than zero, e.g. \"5s\"".into())
    } else {
        Ok(d)
    }
}

/// `IP:PORT` (or `localhost:PORT`); `off` or empty disables the endpoint.
pub fn admin_addr(text: String) -> Result<OrOff<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(OrOff(None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(OrOff(Some(addr)));
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(OrOff(Some(SocketAddr::from(([127, 0, 0, 1], port)))));
    }
    Err(format!(
        "`{text}` is not an address; use IP:PORT, e.g. 127.0.0.1:9464, or `off`"
    ))
}

/// `pretty` or `json`.
pub fn log_format(text: String) -> Result<LogFormat, String> {
    match text.as_str() {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "`{other}` is not a log format; use `pretty` or `json`"
        )),
    }
}

/// 1 to 10000 instances.
pub fn max_instances(n: u32) -> Result<u32, String> {
    if (1..=10_000).contains(&n) {
        Ok(n)
    } else {
        Err("must be between 1 and 10000".into())
    }
}

/// 0.01 to 1024 cores.
pub fn background_cpu_share(share: f64) -> Result<f64, String> {
    if (0.01..=1024.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!(
            "{share} is out of range; use a number of cores from 0.01 to 1024 (e.g. 0.1)"
        ))
    }
}

/// Every entry a valid subject pattern.
pub fn publish_allow(list: Option<Vec<String>>) -> Result<Option<Vec<String>>, String> {
    for pattern in list.iter().flatten() {
        crate::subject::validate_pattern(pattern).map_err(|e| e.to_string())?;
    }
    Ok(list)
}

/// `true` or `false`.
pub fn switch(value: super::value::Switch) -> Result<bool, String> {
    value.on()
}

/// HTTP origin patterns (`scheme://host[:port]`, see [`crate::host::http::origin`]).
pub fn http_origins(list: Option<Vec<String>>) -> Result<Option<Vec<String>>, String> {
    crate::host::http::origin::parse_all(list.as_deref().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok(list)
}

/// Every key letters, digits, `-`, `_` or `.` (what a plugin passes to `config.get`).
pub fn config_values(values: Option<KeyValues>) -> Result<Option<KeyValues>, String> {
    for key in values.iter().flat_map(|v| v.keys()) {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "`{key}` is not a valid config key (letters, digits, `-`, `_`, `.`)"
            ));
        }
    }
    Ok(values)
}

/// Every value an `env:VARIABLE` or `file:PATH` reference (resolved when a
/// plugin loads; a secret's value never sits in the config file).
pub fn secret_refs(refs: Option<KeyValues>) -> Result<Option<KeyValues>, String> {
    let refs = config_values(refs)?;
    for (key, reference) in refs.iter().flatten() {
        crate::host::config::SecretRef::parse(key, reference).map_err(|e| e.to_string())?;
    }
    Ok(refs)
}

/// A KV bucket name, or `off`.
pub fn state_bucket(text: String) -> Result<OrOff<String>, String> {
    if text == "off" {
        return Ok(OrOff(None));
    }
    dedup_bucket(text).map(|b| OrOff(Some(b)))
}

/// `kv` or `memory`.
pub fn dedup_store(text: String) -> Result<DedupStoreKind, String> {
    match text.as_str() {
        "kv" => Ok(DedupStoreKind::Kv),
        "memory" => Ok(DedupStoreKind::Memory),
        other => Err(format!(
            "`{other}` is not a dedup store; use `kv` (shared NATS KV bucket) or `memory` (this host only)"
        )),
    }
}

/// A KV bucket name.
pub fn dedup_bucket(name: String) -> Result<String, String> {
    valid_name(name, "bucket")
}

/// At least a second.
pub fn dedup_ttl(ttl: Duration) -> Result<Duration, String> {
    if ttl < Duration::from_secs(1) {
        Err("must be at least 1s, e.g. \"24h\"".into())
    } else {
        Ok(ttl)
    }
}

/// A stream name.
pub fn dlq_stream(name: String) -> Result<String, String> {
    valid_name(name, "stream")
}

/// A folder, `off`, or (unset) the user's cache folder.
pub fn compile_cache(text: Option<String>) -> Result<OrOff<PathBuf>, String> {
    match text.as_deref() {
        Some("off") => Ok(OrOff(None)),
        Some("") => Err("is empty; give a folder, or `off`".into()),
        Some(dir) => Ok(OrOff(Some(PathBuf::from(dir)))),
        None => Ok(OrOff(default_cache_dir())),
    }
}

/// At least one event.
pub fn core_buffer(n: usize) -> Result<usize, String> {
    if n == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(n)
    }
}

/// A JetStream replica count: 1 to 5 (the server's limit; 3 on a
/// three-node cluster, at most the number of nodes).
pub fn replicas(n: usize) -> Result<usize, String> {
    if (1..=5).contains(&n) {
        Ok(n)
    } else {
        Err("must be between 1 and 5 (JetStream's limit); use 1 on a single server, 3 on a three-node cluster".into())
    }
}

/// `$XDG_CACHE_HOME/sluice/compiled`, else `$HOME/.cache/sluice/compiled`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("sluice").join("compiled"))
}

/// `name` if it is a valid NATS `what` (bucket, stream) name.
fn valid_name(name: String, what: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "`{name}` is not a valid {what} name (letters, digits, `-`, `_`)"
        ))
    }
}
