//! HTTP origins a plugin may call: the patterns of the manifest's `http`
//! list and of the operator's `http_allow`, and the check of one request's
//! origin against both.
//!
//! A pattern is `scheme://host[:port]`: scheme `http` or `https`; host a DNS
//! name, `*.name` for any subdomain of `name` (not `name` itself), an IPv4
//! address or a bracketed IPv6 address; port a number or `*` for any, the
//! scheme's default (80, 443) when left out. No path, query or credentials:
//! a grant is a whole origin. Like publish grants, a request must match the
//! manifest *and* the operator's list (when the operator set one), so copying
//! a manifest never grants more than the operator allows.

use std::fmt;

use thiserror::Error;

/// Why an origin pattern was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "`{pattern}` is not an HTTP origin: {why}; write scheme://host[:port], e.g. \"https://api.example.com\", \"https://*.example.com\" or \"http://127.0.0.1:*\""
)]
pub struct OriginError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub why: String,
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostPattern {
    /// Exactly this host (lower case; an IPv6 address without brackets).
    Exact(String),
    /// Any subdomain of this name (`*.example.com` holds `example.com`).
    Subdomains(String),
}

/// One allowed origin (or family of origins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

/// The origin of one request, as the host checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host; an IPv6 address without brackets.
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// `host[:port]` split, the host unbracketed; `port` is the text after the colon.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected `{after}` after the IPv6 address")),
            },
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl OriginPattern {
    /// Parse a pattern as written in a manifest or the host config.
    pub fn parse(pattern: &str) -> Result<OriginPattern, OriginError> {
        let err = |why: &str| OriginError {
            pattern: pattern.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = pattern.split_once("://").ok_or_else(|| err("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(err("the scheme must be http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(err("an origin has no path, query or fragment"));
        }
        if rest.contains('@') {
            return Err(err("an origin has no credentials"));
        }
        let (host, port) = split_host_port(rest).map_err(|why| err(&why))?;
        let port = match port {
            None => Some(default_port(&scheme)),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err("the port must be 1-65535 or *"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if let Some(name) = host.strip_prefix("*.") {
            if !valid_host(name) {
                return Err(err("`*.` must be followed by a domain name"));
            }
            HostPattern::Subdomains(name.to_string())
        } else if host.parse::<std::net::IpAddr>().is_ok() || valid_host(&host) {
            HostPattern::Exact(host)
        } else if host.contains('*') {
            return Err(err(
                "a wildcard may only be a whole leading label (`*.example.com`)",
            ));
        } else {
            return Err(err("the host is not a domain name or IP address"));
        };
        Ok(OriginPattern { scheme, host, port })
    }

    /// Whether `origin` is one of these origins.
    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port.is_none_or(|p| p == origin.port)
            && match &self.host {
                HostPattern::Exact(h) => *h == origin.host,
                HostPattern::Subdomains(name) => origin
                    .host
                    .strip_suffix(name.as_str())
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            }
    }

    /// The origins both patterns allow, if any (for showing effective grants).
    pub fn intersect(&self, other: &OriginPattern) -> Option<OriginPattern> {
        if self.scheme != other.scheme {
            return None;
        }
        let port = match (self.port, other.port) {
            (Some(a), Some(b)) if a != b => return None,
            (a, b) => a.or(b),
        };
        let covers = |wide: &str, host: &str| {
            host.strip_suffix(wide)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        };
        use HostPattern::{Exact, Subdomains};
        let host = match (&self.host, &other.host) {
            (Exact(a), Exact(b)) if a == b => Exact(a.clone()),
            (Exact(h), Subdomains(n)) | (Subdomains(n), Exact(h)) if covers(n, h) => {
                Exact(h.clone())
            }
            (Subdomains(a), Subdomains(b)) if a == b => Subdomains(a.clone()),
            (Subdomains(a), Subdomains(b)) if covers(a, b) => Subdomains(b.clone()),
            (Subdomains(a), Subdomains(b)) if covers(b, a) => Subdomains(a.clone()),
            _ => return None,
        };
        Some(OriginPattern {
            scheme: self.scheme.clone(),
            host,
            port,
        })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Exact(h) if h.contains(':') => write!(f, "[{h}]")?,
            HostPattern::Exact(h) => write!(f, "{h}")?,
            HostPattern::Subdomains(n) => write!(f, "*.{n}")?,
        }
        match self.port {
            None => write!(f, ":*"),
            Some(p) if p == default_port(&self.scheme) => Ok(()),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

/// Parse every pattern of a list; the error names the first bad one.
pub fn parse_all(patterns: &[String]) -> Result<Vec<OriginPattern>, OriginError> {
    patterns.iter().map(|p| OriginPattern::parse(p)).collect()
}

/// Why a request's origin was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OriginRefusal {
    /// Not in the manifest's `http` list.
    #[error("{origin} is not in the manifest's `http` origins ({granted})")]
    NotGranted {
        /// The refused origin.
        origin: String,
        /// The manifest's origins, or `none`.
        granted: String,
    },
    /// In the manifest, but outside the operator's `http_allow`.
    #[error(
        "{origin} is granted by the manifest but not allowed by the operator for this plugin (allowed: {allowed}); the host config's `http_allow` decides"
    )]
    NotAllowed {
        /// The refused origin.
        origin: String,
        /// The operator's list, or `none`.
        allowed: String,
    },
}

/// The origins one plugin may call: its manifest's, capped by the operator's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpGrants {
    manifest: Vec<OriginPattern>,
    operator: Option<Vec<OriginPattern>>,
}

fn list(patterns: &[OriginPattern]) -> String {
    if patterns.is_empty() {
        return "none".into();
    }
    patterns
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl HttpGrants {
    /// The manifest's origins, capped by the operator's list when there is one.
    pub fn new(manifest: Vec<OriginPattern>, operator: Option<Vec<OriginPattern>>) -> HttpGrants {
        HttpGrants { manifest, operator }
    }

    /// Whether nothing at all is granted by the manifest.
    pub fn is_empty(&self) -> bool {
        self.manifest.is_empty()
    }

    /// Decide whether a request to `origin` may go out.
    pub fn check(&self, origin: &Origin) -> Result<(), OriginRefusal> {
        if !self.manifest.iter().any(|p| p.matches(origin)) {
            return Err(OriginRefusal::NotGranted {
                origin: origin.to_string(),
                granted: list(&self.manifest),
            });
        }
        match &self.operator {
            Some(allow) if !allow.iter().any(|p| p.matches(origin)) => {
                Err(OriginRefusal::NotAllowed {
                    origin: origin.to_string(),
                    allowed: list(allow),
                })
            }
            _ => Ok(()),
        }
    }

    /// The effective origins: each manifest pattern narrowed to what the
    /// operator allows (what `sluice config check` shows).
    pub fn effective(&self) -> Vec<OriginPattern> {
        let mut out: Vec<OriginPattern> = match &self.operator {
            None => self.manifest.clone(),
            Some(allow) => self
                .manifest
                .iter()
                .flat_map(|m| allow.iter().filter_map(|a| m.intersect(a)))
                .collect(),
        };
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(scheme: &str, host: &str, port: u16) -> Origin {
        Origin {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    fn p(s: &str) -> OriginPattern {
        OriginPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_parse_with_default_ports_wildcards_and_ip_literals() {
        assert!(p("https://api.example.com").matches(&origin("https", "api.example.com", 443)));
        assert!(!p("https://api.example.com").matches(&origin("https", "api.example.com", 8443)));
        assert!(!p("https://api.example.com").matches(&origin("http", "api.example.com", 443)));
        assert!(p("HTTP://API.Example.com:8080/").matches(&origin(
            "http",
            "api.example.com",
            8080
        )));
        let any_sub = p("https://*.example.com");
        assert!(any_sub.matches(&origin("https", "a.b.example.com", 443)));
        assert!(!any_sub.matches(&origin("https", "example.com", 443)));
        assert!(!any_sub.matches(&origin("https", "badexample.com", 443)));
        let loopback = p("http://127.0.0.1:*");
        assert!(loopback.matches(&origin("http", "127.0.0.1", 41234)));
        assert!(p("http://[::1]:8080").matches(&origin("http", "::1", 8080)));
        assert_eq!(p("http://[::1]:8080").to_string(), "http://[::1]:8080");
        assert_eq!(p("https://x.io:443").to_string(), "https://x.io");
        for bad in [
            "api.example.com",
            "ftp://x.io",
            "https://x.io/path",
            "https://u:p@x.io",
            "https://x.io:0",
            "https://x.io:http",
            "https://a*.x.io",
            "https://*",
            "https://",
        ] {
            let e = OriginPattern::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("scheme://host"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_request_must_match_the_manifest_and_the_operator() {
        let grants = HttpGrants::new(
            vec![p("https://*.example.com"), p("http://127.0.0.1:*")],
            Some(vec![p("https://api.example.com")]),
        );
        assert!(
            grants
                .check(&origin("https", "api.example.com", 443))
                .is_ok()
        );
        let e = grants
            .check(&origin("https", "other.example.com", 443))
            .unwrap_err();
        assert!(matches!(e, OriginRefusal::NotAllowed { .. }), "{e}");
        assert!(e.to_string().contains("http_allow"));
        let e = grants.check(&origin("https", "evil.io", 443)).unwrap_err();
        assert!(matches!(e, OriginRefusal::NotGranted { .. }), "{e}");
        assert!(e.to_string().contains("https://evil.io:443"), "{e}");
        assert_eq!(
            grants.effective(),
            vec![p("https://api.example.com")],
            "the manifest's wildcard narrowed to the operator's origin; loopback dropped"
        );
        let open = HttpGrants::new(vec![p("http://127.0.0.1:*")], None);
        assert_eq!(open.effective(), vec![p("http://127.0.0.1:*")]);
        assert!(
            HttpGrants::default()
                .check(&origin("https", "x.io", 443))
                .is_err()
        );
    }

    #[test]
    fn intersections_keep_the_narrower_side() {
        let i = |a: &str, b: &str| p(a).intersect(&p(b)).map(|o| o.to_string());
        assert_eq!(
            i("http://h:*", "http://h:81").as_deref(),
            Some("http://h:81")
        );
        assert_eq!(
            i("https://*.a.io", "https://*.b.a.io").as_deref(),
            Some("https://*.b.a.io")
        );
        assert_eq!(
            i("https://*.a.io", "https://x.a.io").as_deref(),
            Some("https://x.a.io")
        );
        assert_eq!(i("https://a.io", "http://a.io"), None);
        assert_eq!(i("https://a.io", "https://b.io"), None);
        assert_eq!(i("http://h:80", "http://h:81"), None);
    }
}
