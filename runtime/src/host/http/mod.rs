//! Outbound HTTP (contract 0.2.0): `wasi:http/outgoing-handler`, served by
//! `wasmtime-wasi-http`, with sluice deciding what goes out.
//!
//! The standard interface is linked so that ordinary guest HTTP libraries
//! work; every request passes through [`HttpBudget`], the `send_request`
//! hook of one attempt, which refuses (with a `wasi:http` error code, and
//! counted) what the plugin may not do:
//!
//! - an origin outside the manifest's `http` list or the operator's
//!   `http_allow` (`HTTP-request-denied`);
//! - more than `max_http_requests` requests in one event
//!   (`connection-limit-reached`);
//! - a host resolving to a private, loopback, link-local or unspecified
//!   address unless the operator set `http_allow_private`
//!   (`destination-IP-prohibited`);
//! - a response body over `max_http_response` (`HTTP-response-body-size`).
//!
//! Each request ends at the attempt's request deadline (shortly before its
//! time limit), whatever the plugin asked for.

pub mod address;
pub mod origin;
mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub use origin::{HttpGrants, Origin, OriginPattern};

/// Most requests one event may send, by default.
pub const DEFAULT_MAX_REQUESTS: u32 = 16;

/// What one plugin may reach over HTTP: its effective grants and whether
/// private addresses are allowed (from its manifest and the operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// The origins it may call.
    pub grants: HttpGrants,
    /// Connect to private, loopback and link-local addresses too.
    pub allow_private: bool,
}

/// Per-event HTTP limits (from the plugin's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests one event may send.
    pub max_requests: u32,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        crate::limits::Limits::default().invoke_limits().http
    }
}

/// One attempt's HTTP: the `wasi:http` hooks that admit or refuse each request.
pub struct HttpBudget {
    policy: Option<Arc<HttpPolicy>>,
    limits: HttpLimits,
    deadline: Option<Instant>,
    plugin: Arc<str>,
    sent: u32,
    refused: Arc<AtomicU32>,
}

impl std::fmt::Debug for HttpBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBudget")
            .field("sent", &self.sent)
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

impl Default for HttpBudget {
    /// Nothing granted.
    fn default() -> Self {
        HttpBudget {
            policy: None,
            limits: HttpLimits::default(),
            deadline: None,
            plugin: Arc::from(""),
            sent: 0,
            refused: Arc::default(),
        }
    }
}

impl HttpBudget {
    /// A budget for one attempt of `plugin` ending at `deadline`; `policy`
    /// `None`: nothing granted.
    pub fn new(
        plugin: Arc<str>,
        policy: Option<Arc<HttpPolicy>>,
        limits: HttpLimits,
        deadline: Instant,
    ) -> HttpBudget {
        HttpBudget {
            policy,
            limits,
            deadline: Some(deadline),
            plugin,
            sent: 0,
            refused: Arc::default(),
        }
    }

    /// Start the next attempt of a warm instance with this budget: nothing
    /// sent yet, `deadline` for its requests. The policy and the refusal
    /// counter are kept when they can be: a counter still shared with a send
    /// pending from an earlier attempt is replaced, so that send's refusal
    /// never counts against this attempt.
    pub fn renew(
        &mut self,
        policy: Option<&Arc<HttpPolicy>>,
        limits: HttpLimits,
        deadline: Instant,
    ) {
        let same_policy = match (&self.policy, policy) {
            (Some(held), Some(wanted)) => Arc::ptr_eq(held, wanted),
            (None, None) => true,
            _ => false,
        };
        if !same_policy {
            self.policy = policy.cloned();
        }
        self.limits = limits;
        self.deadline = Some(deadline);
        self.sent = 0;
        match Arc::get_mut(&mut self.refused) {
            Some(refused) => *refused.get_mut() = 0,
            None => self.refused = Arc::default(),
        }
    }

    /// Requests refused in this attempt (not granted, private address, over
    /// a limit), including refusals still to be decided by a pending send.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&mut self, code: Error, why: &str) -> Error {
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(plugin = %self.plugin, "HTTP request refused: {why}");
        }
        code
    }

    /// Admit a request to `uri`: its origin, and the policy to send it under.
    fn admit(&mut self, uri: &http::Uri) -> Result<(Origin, Arc<HttpPolicy>), Error> {
        let origin = origin_of(uri).ok_or(Error::HttpRequestUriInvalid)?;
        let Some(policy) = self.policy.clone() else {
            let why = format!("{origin}: the manifest grants no HTTP origins (`http = [...]`)");
            return Err(self.refuse(Error::HttpRequestDenied, &why));
        };
        if let Err(e) = policy.grants.check(&origin) {
            return Err(self.refuse(Error::HttpRequestDenied, &e.to_string()));
        }
        if self.sent >= self.limits.max_requests {
            let why = format!(
                "{origin}: at most {} HTTP requests per event (`max_http_requests`)",
                self.limits.max_requests
            );
            return Err(self.refuse(Error::ConnectionLimitReached, &why));
        }
        self.sent += 1;
        Ok((origin, policy))
    }
}

/// The origin a request goes to (scheme, lower-case host, port).
pub fn origin_of(uri: &http::Uri) -> Option<Origin> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase();
    Some(Origin {
        scheme,
        host,
        port: uri.port_u16().unwrap_or(default),
    })
}

type Pending = Box<dyn Future<Output = Result<send::Sent, Error>> + Send>;

impl WasiHttpHooks for HttpBudget {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Pending {
        let (origin, policy) = match self.admit(request.uri()) {
            Ok(admitted) => admitted,
            Err(code) => return Box::new(async move { Err(code) }),
        };
        let deadline = self.deadline.unwrap_or_else(Instant::now);
        let target = send::Target {
            origin,
            allow_private: policy.allow_private,
            deadline: tokio::time::Instant::from_std(deadline),
            options,
            max_body: self.limits.max_response_bytes,
            refused: self.refused.clone(),
            plugin: self.plugin.clone(),
        };
        Box::new(send::send(request, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(grants: &[&str], max_requests: u32) -> HttpBudget {
        let patterns = grants
            .iter()
            .map(|g| OriginPattern::parse(g).unwrap())
            .collect();
        HttpBudget::new(
            "test".into(),
            Some(Arc::new(HttpPolicy {
                grants: HttpGrants::new(patterns, None),
                allow_private: false,
            })),
            HttpLimits {
                max_requests,
                max_response_bytes: 1024,
            },
            Instant::now(),
        )
    }

    #[test]
    fn origins_are_read_from_uris_with_default_ports() {
        let o = origin_of(&"https://API.example.com/x?y".parse().unwrap()).unwrap();
        assert_eq!(
            (o.scheme.as_str(), o.host.as_str(), o.port),
            ("https", "api.example.com", 443)
        );
        let o = origin_of(&"http://[::1]:8080/".parse().unwrap()).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 8080));
        assert!(origin_of(&"ftp://x/".parse().unwrap()).is_none());
        assert!(origin_of(&"/relative".parse().unwrap()).is_none());
    }

    #[test]
    fn ungranted_origins_and_requests_over_the_limit_are_refused_and_counted() {
        let mut b = budget(&["https://api.example.com"], 2);
        let ok: http::Uri = "https://api.example.com/charge".parse().unwrap();
        let other: http::Uri = "https://evil.example.com/".parse().unwrap();
        assert!(b.admit(&ok).is_ok());
        assert!(matches!(b.admit(&other), Err(Error::HttpRequestDenied)));
        assert!(b.admit(&ok).is_ok());
        assert!(matches!(b.admit(&ok), Err(Error::ConnectionLimitReached)));
        assert_eq!(b.refused(), 2);
        let mut none = HttpBudget::default();
        assert!(matches!(none.admit(&ok), Err(Error::HttpRequestDenied)));
        assert_eq!(none.refused(), 1);
    }

    #[test]
    fn a_renewed_budget_starts_the_next_attempt_from_nothing_sent_or_refused() {
        let mut b = budget(&["https://api.example.com"], 1);
        let ok: http::Uri = "https://api.example.com/charge".parse().unwrap();
        let policy = b.policy.clone();
        assert!(b.admit(&ok).is_ok());
        assert!(matches!(b.admit(&ok), Err(Error::ConnectionLimitReached)));
        let counter = Arc::as_ptr(&b.refused);
        b.renew(policy.as_ref(), b.limits, Instant::now());
        assert_eq!(b.refused(), 0);
        assert!(Arc::ptr_eq(
            b.policy.as_ref().unwrap(),
            policy.as_ref().unwrap()
        ));
        assert_eq!(
            Arc::as_ptr(&b.refused),
            counter,
            "an unshared counter is reset in place"
        );
        assert!(
            b.admit(&ok).is_ok(),
            "the request limit counts from the renewal"
        );
    }

    #[test]
    fn a_send_still_pending_from_an_earlier_attempt_never_counts_against_the_next() {
        let mut b = budget(&["https://api.example.com"], 4);
        // A pending send holds the attempt's counter (`send::Target::refused`).
        let pending_send = b.refused.clone();
        b.renew(None, b.limits, Instant::now());
        pending_send.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            b.refused(),
            0,
            "the late refusal counts for its own attempt only"
        );
        let ok: http::Uri = "https://api.example.com/charge".parse().unwrap();
        assert!(
            matches!(b.admit(&ok), Err(Error::HttpRequestDenied)),
            "renewed with no policy: nothing granted"
        );
        assert_eq!(b.refused(), 1);
    }
}
