//! Sending one granted request: resolve the host, check every address,
//! connect to a checked address, TLS, HTTP/1.1, and read the whole response
//! within the attempt's deadline and the response-size limit.
//!
//! The host resolves the name itself and connects to the very address it
//! checked, so a name cannot pass the private-address check with one answer
//! and be connected to another (DNS rebinding). The response is read whole
//! here, so a slow or oversized body ends as a clear error code from the
//! response future instead of a broken stream.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::address::non_public;
use super::origin::Origin;

/// Everything one send needs, owned (the future outlives the host call).
pub(super) struct Target {
    /// The granted origin.
    pub origin: Origin,
    /// Connect to private addresses too.
    pub allow_private: bool,
    /// The attempt's request deadline.
    pub deadline: Instant,
    /// The guest's own timeouts, if it set any.
    pub options: Option<RequestOptions>,
    /// Largest response body accepted, in bytes.
    pub max_body: u64,
    /// The attempt's refusal count.
    pub refused: Arc<AtomicU32>,
    /// The plugin, for the log.
    pub plugin: Arc<str>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// What the hook's future resolves to.
pub(super) type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl Target {
    /// The earlier of the deadline and `now + limit` (a guest timeout).
    fn by(&self, limit: Option<Duration>) -> Instant {
        limit.map_or(self.deadline, |l| self.deadline.min(Instant::now() + l))
    }

    fn refuse(&self, why: &str) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.plugin, origin = %self.origin, "HTTP request refused: {why}");
        Error::DestinationIpProhibited
    }
}

/// Send `request` to `target` and read the whole response.
pub(super) async fn send(request: http::Request<WasiBody>, target: Target) -> Result<Sent, Error> {
    let connect_by = target.by(target.options.and_then(|o| o.connect_timeout));
    let addrs = timeout_at(connect_by, resolve(&target.origin))
        .await
        .map_err(|_| Error::DnsTimeout)??;
    if !target.allow_private {
        for addr in &addrs {
            if let Some(kind) = non_public(addr.ip()) {
                return Err(target.refuse(&format!(
                    "`{}` resolves to {} ({kind}); the operator allows only public addresses (`http_allow_private`)",
                    target.origin.host,
                    addr.ip()
                )));
            }
        }
    }
    let tcp = timeout_at(connect_by, connect(&addrs))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Stream> = if target.origin.scheme == "https" {
        let tls = timeout_at(connect_by, tls(tcp, &target.origin.host))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = timeout_at(
        connect_by,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection is driven beside the exchange and never outlives the
    // deadline by more than a moment. It must outlive it a little: dropped
    // at the very deadline, it would race the exchange's own timeout, and a
    // slow server would look like a protocol error instead of a timeout.
    let drive_until = target.deadline + CONNECTION_GRACE;
    let driver = tokio::spawn(async move {
        let _ = timeout_at(drive_until, connection).await;
    });
    let (mut parts, body) = request.into_parts();
    // On the wire, the request line carries the path only (origin form).
    parts.uri = http::Uri::builder()
        .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let first_byte_by = target.by(target.options.and_then(|o| o.first_byte_timeout));
    let response = timeout_at(
        first_byte_by,
        sender.send_request(http::Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| Error::ConnectionReadTimeout)??;
    let (parts, body) = response.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > target.max_body) {
        return Err(too_large(&target, declared));
    }
    let body = read_limited(body, &target).await?;
    drop(sender);
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let done = async move {
        let _ = driver.await;
        Ok(())
    };
    Ok((http::Response::from_parts(parts, body), Box::new(done)))
}

fn too_large(target: &Target, declared: Option<u64>) -> Error {
    target.refused.fetch_add(1, Ordering::Relaxed);
    let size = declared.map_or_else(|| "more than that".into(), |n| format!("{n} bytes"));
    tracing::warn!(
        plugin = %target.plugin, origin = %target.origin,
        "HTTP response refused: {size}, over the plugin's limit of {} bytes (`max_http_response`)",
        target.max_body
    );
    Error::HttpResponseBodySize(Some(target.max_body))
}

/// How long the connection is driven past the deadline, so the exchange's
/// own timeout is what ends a slow exchange.
const CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The body, at most `max_body` bytes, read by the deadline.
async fn read_limited(mut body: hyper::body::Incoming, target: &Target) -> Result<Bytes, Error> {
    let between = target.options.and_then(|o| o.between_bytes_timeout);
    let mut buf = Vec::new();
    loop {
        let frame = timeout_at(target.by(between), body.frame())
            .await
            .map_err(|_| Error::HttpResponseTimeout)?;
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if buf.len() as u64 + data.len() as u64 > target.max_body {
            return Err(too_large(target, None));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// Every address of the origin's host (an IP literal is its own answer).
async fn resolve(origin: &Origin) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = origin.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, origin.port)]);
    }
    let dns_error = |why: String| Error::DnsError {
        rcode: Some(why),
        info_code: None,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((origin.host.as_str(), origin.port))
        .await
        .map_err(|e| dns_error(format!("cannot resolve `{}`: {e}", origin.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(dns_error(format!("`{}` has no address", origin.host)));
    }
    Ok(addrs)
}

/// A connection to the first of `addrs` that accepts one.
async fn connect(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// TLS over `tcp`, verifying the certificate for `host` against the web PKI roots.
async fn tls(
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use std::sync::LazyLock;
    static CONFIG: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::from(ip),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| Error::HttpRequestUriInvalid)?,
    };
    tokio_rustls::TlsConnector::from(CONFIG.clone())
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)
}
