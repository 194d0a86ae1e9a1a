//! How the host authenticates to NATS and secures the connection: the
//! declared `nats_*` settings turned into [`NatsSettings`], with the seed,
//! credentials and TLS files read and checked at start, so a wrong path or
//! a file of the wrong kind stops the host with the key named rather than at
//! the first connect. The configuration only declares and merges these keys;
//! what they mean for the connection is decided here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::config::value::MASK;
use crate::config::{Secret, Values};

/// Default time limit of one NATS connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the host authenticates to NATS (at most one method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or credentials embedded in the URL).
    None,
    /// User name and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// An NKey seed read from `file`.
    NKey {
        /// The seed file.
        file: PathBuf,
        /// The seed.
        seed: Secret,
    },
    /// A credentials file (user JWT + seed), read at each connect.
    Creds(PathBuf),
}

/// TLS settings of the NATS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates (PEM) trusted for the server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// Whether TLS is configured (the connection then requires TLS).
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// Validated NATS connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs.
    pub urls: Vec<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Time limit of one connection attempt.
    pub connect_timeout: Duration,
}

impl NatsSettings {
    /// Defaults for `urls`: no auth, no TLS, a 5 s connect timeout.
    pub fn plain(urls: Vec<String>) -> Self {
        NatsSettings {
            urls,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The URLs joined for logs, with any embedded password masked.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The connection settings from the declared `nats_*` settings, with
    /// the authentication method and every file checked.
    pub fn from_values(v: &Values) -> Result<NatsSettings, AuthError> {
        Ok(NatsSettings {
            urls: v.nats_url.0.clone(),
            auth: auth(v)?,
            tls: tls(v)?,
            connect_timeout: v.nats_connect_timeout,
        })
    }
}

/// A NATS authentication or TLS setting that cannot be used; names the key.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("config key `{key}`: {message}")]
pub struct AuthError {
    /// The setting (`nats_creds_file`, ...).
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// A NATS URL with the password of `user:password@` (or a token) masked.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                None => MASK.to_string(),
            };
            format!("{scheme}{user}@{host}")
        }
        None => url.to_string(),
    }
}

fn invalid(key: &'static str, message: String) -> AuthError {
    AuthError { key, message }
}

/// The one authentication method configured, with its files read and checked.
fn auth(v: &Values) -> Result<NatsAuth, AuthError> {
    let set: Vec<&'static str> = [
        (
            v.nats_user.is_some() || v.nats_password.is_some(),
            "nats_user/nats_password",
        ),
        (v.nats_token.is_some(), "nats_token"),
        (v.nats_nkey_file.is_some(), "nats_nkey_file"),
        (v.nats_creds_file.is_some(), "nats_creds_file"),
    ]
    .into_iter()
    .filter_map(|(is_set, key)| is_set.then_some(key))
    .collect();
    if set.len() > 1 {
        return Err(invalid(
            set[1],
            format!(
                "conflicts with {}; configure one NATS authentication method",
                set[0]
            ),
        ));
    }
    let read = |key: &'static str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    Ok(
        match (
            &v.nats_user,
            &v.nats_password,
            &v.nats_token,
            &v.nats_nkey_file,
            &v.nats_creds_file,
        ) {
            (Some(user), Some(password), ..) => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (Some(_), None, ..) => {
                return Err(invalid(
                    "nats_password",
                    "is required with nats_user (SLUICE_NATS_PASSWORD)".into(),
                ));
            }
            (None, Some(_), ..) => {
                return Err(invalid(
                    "nats_user",
                    "is required with nats_password (SLUICE_NATS_USER)".into(),
                ));
            }
            (_, _, Some(token), ..) => NatsAuth::Token(token.clone()),
            (_, _, _, Some(file), _) => {
                let seed = read("nats_nkey_file", file)?.trim().to_string();
                if nkeys::KeyPair::from_seed(&seed).is_err() {
                    return Err(invalid(
                        "nats_nkey_file",
                        format!(
                            "{} does not hold an NKey seed (a line starting with `SU`); generate one with `nk -gen user`",
                            file.display()
                        ),
                    ));
                }
                NatsAuth::NKey {
                    file: file.clone(),
                    seed: Secret::new(seed),
                }
            }
            (_, _, _, _, Some(file)) => {
                let text = read("nats_creds_file", file)?;
                if let Err(e) = async_nats::ConnectOptions::with_credentials(&text) {
                    return Err(invalid(
                        "nats_creds_file",
                        format!(
                            "{} is not a NATS credentials file ({e}); use the .creds file `nsc generate creds` writes",
                            file.display()
                        ),
                    ));
                }
                NatsAuth::Creds(file.clone())
            }
            _ => NatsAuth::None,
        },
    )
}

/// TLS files, each checked to be readable.
fn tls(v: &Values) -> Result<NatsTls, AuthError> {
    let check = |key: &'static str, path: &Option<PathBuf>| match path {
        Some(path) => match std::fs::File::open(path) {
            Ok(_) => Ok(Some(path.clone())),
            Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
        },
        None => Ok(None),
    };
    let ca = check("nats_tls_ca", &v.nats_tls_ca)?;
    let cert = check("nats_tls_cert", &v.nats_tls_cert)?;
    let key = check("nats_tls_key", &v.nats_tls_key)?;
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "nats_tls_key",
                "is required with nats_tls_cert (the client certificate's private key)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "nats_tls_cert",
                "is required with nats_tls_key (the client certificate)".into(),
            ));
        }
    };
    Ok(NatsTls { ca, client })
}
