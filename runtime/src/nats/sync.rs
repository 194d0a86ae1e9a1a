//! Waiting until the server has processed what a client sent.
//!
//! `async_nats::Client::flush` only empties the client's own write buffer:
//! it returns before the server has read a `SUB`, so a message published on
//! another connection right after "subscribe + flush" can find no
//! subscriber and be gone (core NATS keeps nothing). A round trip on the same
//! connection closes that gap: the server handles one connection's
//! operations in order, so once a probe the client published comes back to
//! it, every subscription sent before the probe is in place.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use thiserror::Error;

/// The round trip did not complete.
#[derive(Debug, Error)]
pub enum SyncError {
    /// Subscribing to or publishing the probe failed.
    #[error("cannot send the NATS round-trip probe: {0}")]
    Send(String),
    /// The probe did not come back in time (the connection is down or slow).
    #[error("the NATS server did not echo the round-trip probe within {0:?}")]
    Timeout(Duration),
}

/// Return once the server has processed everything `client` sent before
/// this call (its subscriptions included), or fail after `timeout`.
pub async fn synced(client: &Client, timeout: Duration) -> Result<(), SyncError> {
    let subject = format!("{}.sync", client.new_inbox());
    let mut probe = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| SyncError::Send(e.to_string()))?;
    client
        .publish(subject, bytes::Bytes::new())
        .await
        .map_err(|e| SyncError::Send(e.to_string()))?;
    let echoed = tokio::time::timeout(timeout, probe.next()).await;
    let _ = probe.unsubscribe().await;
    match echoed {
        Ok(Some(_)) => Ok(()),
        Ok(None) | Err(_) => Err(SyncError::Timeout(timeout)),
    }
}
