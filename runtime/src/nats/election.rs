//! Riding out a JetStream leader election.
//!
//! On a cluster, a node going away leaves the streams, KV buckets and
//! consumers it led without a leader for a few seconds (longer on a loaded
//! machine) until the other replicas elect one. Meanwhile a publish to the
//! stream finds no responder (async-nats says "no stream found for given
//! subject"), or its ack or an API request times out, and the same request
//! succeeds once a leader is elected. Such failures are transient: they are
//! retried with backoff for a bounded time ([`ElectionBackoff`]) instead of
//! failing an attempt that already ran (which would run the handler again and
//! spend one of its attempts on the cluster's election).
//!
//! The same holds for the API requests that set up a plugin's consumer
//! ([`api_unavailable`]): a host starting (or reloading a plugin) while the
//! cluster elects a leader binds the consumer once it can, instead of giving
//! up on the plugin until its file changes.
//!
//! A "no responders" on a subject that no stream captures is not transient:
//! it is a configuration error and fails at once, as it always did. Nor is
//! a timed-out ack on such a subject: a core subscriber took the publish,
//! so no "no responders" came, and no ack ever will; trying again would
//! only hand that subscriber more copies ([`publish_outlook`] asks the
//! cluster which case it is).

use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishError, PublishErrorKind};
use tokio::time::Instant;

/// How long a confirmed publish keeps retrying a transient failure: several
/// elections' worth (an election takes seconds; a loaded machine stretches
/// it), short enough that a cluster that stays down fails the attempt and
/// the normal retry policy takes over.
pub const RIDE_OUT: Duration = Duration::from_secs(20);
/// First pause between tries.
const FIRST: Duration = Duration::from_millis(100);
/// Longest pause between tries.
const LONGEST: Duration = Duration::from_secs(2);

/// Backoff between tries while a leader is elected: 100 ms doubling to 2 s,
/// until a deadline.
pub struct ElectionBackoff {
    next: Duration,
    deadline: Instant,
}

impl ElectionBackoff {
    /// Tries allowed for `within` from now.
    pub fn new(within: Duration) -> ElectionBackoff {
        ElectionBackoff {
            next: FIRST,
            deadline: Instant::now() + within,
        }
    }

    /// Pause before the next try; `false` (without pausing) once the next
    /// try would start after the deadline.
    pub async fn pause(&mut self) -> bool {
        match self.next_pause(Instant::now()) {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
            None => false,
        }
    }

    /// The pause before the next try if it starts by the deadline, as of `now`.
    fn next_pause(&mut self, now: Instant) -> Option<Duration> {
        let pause = self.next;
        if now + pause > self.deadline {
            return None;
        }
        self.next = (self.next * 2).min(LONGEST);
        Some(pause)
    }
}

/// What a failed confirmed publish calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutlook {
    /// Transient (a lost or late ack, a connection failing over, too many
    /// acks outstanding, a stream without a leader for now): publish again.
    MayRecover,
    /// No stream captures the subject: a configuration error.
    NoStreamCaptures,
    /// Refused (a payload over the limit, a server refusal): trying again
    /// cannot help.
    Refused,
}

/// What a confirmed publish to `subject` that failed with `error` calls
/// for. A "no responders" or a timed-out ack is transient only while a
/// stream does capture `subject` (or the cluster cannot say yet).
pub async fn publish_outlook(
    js: &async_nats::jetstream::Context,
    subject: &str,
    error: &PublishError,
) -> PublishOutlook {
    match error.kind() {
        PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
            PublishOutlook::MayRecover
        }
        // A timed-out ack is a lost or late answer only if a stream captures
        // the subject: with none, a core subscriber on it took the publish
        // (so no "no responders"), and each try again would hand it another
        // copy while no ack can ever come.
        PublishErrorKind::TimedOut | PublishErrorKind::StreamNotFound => {
            match js.stream_by_subject(subject).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        GetStreamByNameErrorKind::NotFound
                            | GetStreamByNameErrorKind::InvalidSubject
                    ) =>
                {
                    PublishOutlook::NoStreamCaptures
                }
                _ => PublishOutlook::MayRecover,
            }
        }
        PublishErrorKind::Other if unavailable(error) => PublishOutlook::MayRecover,
        _ => PublishOutlook::Refused,
    }
}

/// A server answer saying JetStream is unavailable for now (HTTP-like code
/// 503: no leader, cluster not available), not that the request is wrong.
fn unavailable(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| e.code() == 503)
}

/// Whether a JetStream API request (creating or looking up a stream or a
/// consumer) failed for want of an answer rather than being refused: it
/// timed out, found no responder, or the server said JetStream is
/// unavailable for now (503: no meta leader, a stream without a leader).
/// Such a request succeeds once the cluster has elected its leaders; a
/// refusal (a stream that does not exist, a setting it rejects) does not.
pub fn api_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{
        CreateStreamError, CreateStreamErrorKind as Create, GetStreamError,
        GetStreamErrorKind as Get, RequestError as JsRequestError, RequestErrorKind as JsRequest,
    };
    use async_nats::jetstream::stream::{
        ConsumerError, ConsumerErrorKind as Consumer, ConsumerUpdateError,
        ConsumerUpdateErrorKind as Update,
    };
    use async_nats::{RequestError, RequestErrorKind as Request};
    let mut next = Some(error);
    while let Some(e) = next {
        let answered_no = if let Some(e) = e.downcast_ref::<async_nats::jetstream::Error>() {
            no_leader(e)
        } else if let Some(e) = e.downcast_ref::<CreateStreamError>() {
            match e.kind() {
                Create::TimedOut | Create::JetStreamUnavailable => true,
                Create::JetStream(e) => no_leader(&e),
                _ => false,
            }
        } else if let Some(e) = e.downcast_ref::<GetStreamError>() {
            match e.kind() {
                Get::Request => true,
                Get::JetStream(e) => no_leader(&e),
                _ => false,
            }
        } else if let Some(e) = e.downcast_ref::<JsRequestError>() {
            matches!(e.kind(), JsRequest::TimedOut | JsRequest::NoResponders)
        } else if let Some(e) = e.downcast_ref::<RequestError>() {
            matches!(e.kind(), Request::TimedOut | Request::NoResponders)
        } else if let Some(e) = e.downcast_ref::<ConsumerError>() {
            match e.kind() {
                Consumer::TimedOut | Consumer::Request => true,
                Consumer::JetStream(e) => no_leader(&e),
                _ => false,
            }
        } else if let Some(e) = e.downcast_ref::<ConsumerUpdateError>() {
            match e.kind() {
                Update::TimedOut | Update::Request => true,
                Update::JetStream(e) => no_leader(&e),
                _ => false,
            }
        } else {
            false
        };
        if answered_no {
            return true;
        }
        next = e.source();
    }
    false
}

/// A 503 that means "no leader for now", not "JetStream is not enabled"
/// (also a 503, but a configuration the operator must change).
fn no_leader(error: &async_nats::jetstream::Error) -> bool {
    use async_nats::jetstream::ErrorCode;
    error.code() == 503
        && !matches!(
            error.error_code(),
            ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_stops_at_the_deadline() {
        let start = Instant::now();
        let mut backoff = ElectionBackoff::new(Duration::from_secs(10));
        let mut now = start;
        let mut pauses = Vec::new();
        while let Some(pause) = backoff.next_pause(now) {
            pauses.push(pause.as_millis());
            now += pause;
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert!(now - start <= Duration::from_secs(10));
    }

    #[test]
    fn a_timed_out_api_request_is_unavailable_and_a_missing_stream_is_not() {
        use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
        let timed_out = CreateStreamError::new(CreateStreamErrorKind::TimedOut);
        assert!(api_unavailable(&timed_out));
        let missing = CreateStreamError::new(CreateStreamErrorKind::NotFound);
        assert!(!api_unavailable(&missing));
        let boxed: async_nats::Error = Box::new(async_nats::RequestError::new(
            async_nats::RequestErrorKind::TimedOut,
        ));
        assert!(api_unavailable(boxed.as_ref()));
    }

    #[test]
    fn a_refusal_or_an_oversized_message_is_not_transient() {
        assert!(!unavailable(&PublishError::new(PublishErrorKind::Other)));
    }
}
