//! NATS subjects: validating subscription patterns and publish subjects, and
//! matching a subject against grant patterns (`*` = one token, `>` = the rest).
//!
//! Publish grants are the plugin's capability to emit events. Some subjects
//! are never grantable, whatever a manifest says: the DLQ, the JetStream and
//! system APIs, KV buckets and reply inboxes.

use thiserror::Error;

/// Subject prefixes a plugin can never publish to.
pub const RESERVED_PREFIXES: &[&str] = &["$JS.", "$SYS.", "$KV.", "$O.", "_INBOX.", "sluice.dlq."];

/// Longest subject or pattern accepted, in bytes (nats-server's control line
/// is 4 KiB by default, and a plugin-controlled string is echoed in errors).
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Why a subject or pattern is invalid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubjectError {
    /// Empty string.
    #[error("subject is empty")]
    Empty,
    /// Longer than [`MAX_SUBJECT_LEN`].
    #[error("subject is {0} bytes long; at most 1024 are allowed")]
    TooLong(usize),
    /// An empty token (`a..b`, leading or trailing dot).
    #[error("subject `{0}` has an empty token (leading, trailing or double dot)")]
    EmptyToken(String),
    /// Whitespace or control characters.
    #[error("subject `{0}` contains whitespace or a control character")]
    Whitespace(String),
    /// `>` not as the last token, or a wildcard inside a token (`a*`).
    #[error(
        "subject pattern `{0}` misuses a wildcard: `*` must be a whole token and `>` only the last token"
    )]
    BadWildcard(String),
    /// A wildcard where a concrete subject is required.
    #[error("subject `{0}` contains a wildcard; publish to a concrete subject")]
    WildcardInPublish(String),
}

/// Check a subscription pattern (wildcards allowed).
pub fn validate_pattern(pattern: &str) -> Result<(), SubjectError> {
    check_tokens(pattern, true)
}

/// Check a concrete publish subject (no wildcards).
pub fn validate_publish_subject(subject: &str) -> Result<(), SubjectError> {
    check_tokens(subject, false)
}

fn check_tokens(s: &str, wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong(s.len()));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::Whitespace(s.to_string()));
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken(s.to_string()));
        }
        let is_wild = *token == "*" || *token == ">";
        if is_wild && !wildcards {
            return Err(SubjectError::WildcardInPublish(s.to_string()));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(SubjectError::BadWildcard(s.to_string()));
        }
        if !is_wild && (token.contains('*') || token.contains('>')) {
            if wildcards {
                return Err(SubjectError::BadWildcard(s.to_string()));
            }
            return Err(SubjectError::WildcardInPublish(s.to_string()));
        }
    }
    Ok(())
}

/// Whether concrete `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some concrete subject matches both `a` and `b` (valid patterns).
pub fn overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            // `>` takes one or more tokens: anything the other has left.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `subject` is reserved for the system (never publishable by a plugin).
pub fn is_reserved(subject: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| subject.starts_with(p))
}

/// The subjects a plugin may publish to: what its manifest grants, narrowed
/// by the operator's allow-list when one is configured (a publish must match
/// both, so copying a manifest never grants more than the operator allows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishGrants {
    patterns: Vec<String>,
    operator_allow: Option<Vec<String>>,
}

/// Why a publish was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrantError {
    /// The subject is syntactically invalid.
    #[error(transparent)]
    Invalid(#[from] SubjectError),
    /// Reserved for the system.
    #[error(
        "subject `{0}` is reserved for the system ($JS, $SYS, $KV, _INBOX, DLQ) and can never be published by a plugin"
    )]
    Reserved(String),
    /// Not covered by any grant.
    #[error(
        "subject `{subject}` is not in the plugin's publish grants ({grants}); add a matching pattern to `publish` in the manifest"
    )]
    NotGranted {
        /// The refused subject.
        subject: String,
        /// The grants, comma-separated, or `none`.
        grants: String,
    },
    /// Granted by the manifest but outside the operator's allow-list.
    #[error(
        "subject `{subject}` is granted by the manifest but not allowed by the operator for this plugin (allowed: {allowed}); the host config's `publish_allow` decides"
    )]
    NotAllowed {
        /// The refused subject.
        subject: String,
        /// The operator's allow-list, comma-separated, or `none`.
        allowed: String,
    },
}

impl PublishGrants {
    /// Grants from validated patterns.
    pub fn new(patterns: Vec<String>) -> Self {
        PublishGrants {
            patterns,
            operator_allow: None,
        }
    }

    /// These grants, narrowed to subjects matching the operator's `allow` patterns.
    pub fn restricted_to(mut self, allow: Vec<String>) -> Self {
        self.operator_allow = Some(allow);
        self
    }

    /// The granted patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Decide whether a plugin may publish to `subject`.
    pub fn check(&self, subject: &str) -> Result<(), GrantError> {
        validate_publish_subject(subject)?;
        if is_reserved(subject) {
            return Err(GrantError::Reserved(subject.to_string()));
        }
        if !self.patterns.iter().any(|p| matches(p, subject)) {
            return Err(GrantError::NotGranted {
                subject: subject.to_string(),
                grants: list_or_none(&self.patterns),
            });
        }
        match &self.operator_allow {
            Some(allow) if !allow.iter().any(|p| matches(p, subject)) => {
                Err(GrantError::NotAllowed {
                    subject: subject.to_string(),
                    allowed: list_or_none(allow),
                })
            }
            _ => Ok(()),
        }
    }
}

fn list_or_none(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "none".to_string()
    } else {
        patterns.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_overlap_when_one_subject_matches_both() {
        for (a, b) in [
            ("orders.>", "orders.eu"),
            ("orders.*", "orders.>"),
            ("a.*.c", "a.b.*"),
            ("*", "x"),
            (">", "a.b"),
            ("a.b", "a.b"),
        ] {
            assert!(overlap(a, b) && overlap(b, a), "{a} / {b}");
        }
        for (a, b) in [
            ("orders.>", "orders"),
            ("orders.*", "orders.eu.x"),
            ("a.*.c", "a.b.d"),
            ("a", "b"),
            ("a.b", "a"),
        ] {
            assert!(!overlap(a, b) && !overlap(b, a), "{a} / {b}");
        }
    }

    #[test]
    fn wildcard_matching_follows_nats_rules() {
        assert!(matches("orders.*", "orders.created"));
        assert!(!matches("orders.*", "orders.created.eu"));
        assert!(matches("orders.>", "orders.created.eu"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("*.created", "orders.created"));
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.updated"));
        assert!(matches(">", "anything.at.all"));
    }

    #[test]
    fn invalid_patterns_are_named() {
        assert_eq!(validate_pattern(""), Err(SubjectError::Empty));
        assert!(matches!(
            validate_pattern("a..b"),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(SubjectError::BadWildcard(_))
        ));
        assert!(matches!(
            validate_pattern("a.b*"),
            Err(SubjectError::BadWildcard(_))
        ));
        assert!(matches!(
            validate_pattern("a b"),
            Err(SubjectError::Whitespace(_))
        ));
        assert!(validate_pattern("orders.*.eu.>").is_ok());
        assert_eq!(
            validate_publish_subject(&"a".repeat(5000)),
            Err(SubjectError::TooLong(5000))
        );
        assert!(matches!(
            validate_publish_subject("orders.*"),
            Err(SubjectError::WildcardInPublish(_))
        ));
    }

    #[test]
    fn grants_refuse_reserved_and_ungranted_subjects() {
        let grants = PublishGrants::new(vec![">".into()]);
        assert!(grants.check("orders.enriched").is_ok());
        assert!(matches!(
            grants.check("$JS.API.STREAM.LIST"),
            Err(GrantError::Reserved(_))
        ));
        assert!(matches!(
            grants.check("_INBOX.abc"),
            Err(GrantError::Reserved(_))
        ));
        assert!(matches!(
            grants.check("sluice.dlq.echo"),
            Err(GrantError::Reserved(_))
        ));
        let narrow = PublishGrants::new(vec!["orders.enriched.>".into()]);
        assert!(narrow.check("orders.enriched.created").is_ok());
        let err = narrow.check("payments.created").unwrap_err();
        assert!(err.to_string().contains("orders.enriched.>"), "{err}");
    }

    #[test]
    fn the_operator_allow_list_narrows_what_a_manifest_grants() {
        let grants = PublishGrants::new(vec![">".into()]).restricted_to(vec!["orders.>".into()]);
        assert!(grants.check("orders.created").is_ok());
        let err = grants.check("payments.created").unwrap_err();
        assert!(matches!(err, GrantError::NotAllowed { .. }), "{err}");
        assert!(err.to_string().contains("orders.>"), "{err}");
        // Reserved subjects stay reserved even when the operator allows them.
        let careless = PublishGrants::new(vec![">".into()]).restricted_to(vec![">".into()]);
        assert!(matches!(
            careless.check("$JS.API.STREAM.DELETE.X"),
            Err(GrantError::Reserved(_))
        ));
        assert!(matches!(
            careless.check("$SYS.REQ.SERVER.PING"),
            Err(GrantError::Reserved(_))
        ));
        assert!(matches!(
            careless.check("$KV.bucket.key"),
            Err(GrantError::Reserved(_))
        ));
        // A manifest cannot widen the operator's list either.
        let narrow = PublishGrants::new(vec!["audit.>".into()]).restricted_to(vec![">".into()]);
        assert!(matches!(
            narrow.check("orders.created"),
            Err(GrantError::NotGranted { .. })
        ));
    }
}
