//! JetStream plumbing: the durable pull consumer of a plugin (and its stream,
//! when the manifest asks the host to create it).
//!
//! A consumer that already exists is brought in line with the manifest
//! (subjects, `ack_wait`, `max_ack_pending`): a redeploy that changes them
//! takes effect, or is refused with the server's reason. The stream's
//! creation time comes back with the consumer: it is the stream's identity
//! in idempotency keys (a stream deleted and created again restarts its
//! sequences).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use thiserror::Error;

use super::election;
use crate::manifest::Manifest;

/// Why a plugin's JetStream consumer could not be set up.
#[derive(Debug, Error)]
pub enum JetStreamSetupError {
    /// The stream is missing and the manifest does not allow creating it.
    #[error(
        "stream `{stream}` does not exist ({message}); create it, or set `create_stream = true` under [jetstream] in the manifest"
    )]
    StreamMissing {
        /// Stream name.
        stream: String,
        /// Server message.
        message: String,
    },
    /// Creating the stream failed.
    #[error("cannot create stream `{stream}`: {message}")]
    StreamCreate {
        /// Stream name.
        stream: String,
        /// Server message.
        message: String,
    },
    /// The manifest's `ack_wait` would let the server redeliver an event
    /// while its attempt may still run.
    #[error(
        "`jetstream.ack_wait` is {ack_wait:?}, shorter than the plugin's `timeout` of {timeout:?} plus {margin:?} for the outbox commit; raise ack_wait (or remove it: the host sizes it) or lower timeout"
    )]
    AckWaitTooShort {
        /// The manifest's value.
        ack_wait: Duration,
        /// The plugin's time limit.
        timeout: Duration,
        /// The margin required on top.
        margin: Duration,
    },
    /// The existing consumer could not be brought in line with the manifest.
    #[error(
        "durable consumer `{durable}` on stream `{stream}` exists with other settings and cannot be updated ({message}); delete it (`nats consumer rm {stream} {durable}`) or revert the manifest"
    )]
    Update {
        /// Stream name.
        stream: String,
        /// Consumer name.
        durable: String,
        /// Server message.
        message: String,
    },
    /// The cluster did not answer a setup request (timed out, no leader
    /// yet): the same request succeeds once it has elected its leaders, so
    /// the host tries again ([`JetStreamSetupError::is_transient`]).
    #[error(
        "JetStream cannot set up stream `{stream}` or its consumer for now ({message}); retrying until the cluster answers"
    )]
    Unavailable {
        /// Stream name.
        stream: String,
        /// Client or server message.
        message: String,
    },
    /// Creating or binding the consumer failed.
    #[error("cannot create durable consumer `{durable}` on stream `{stream}`: {message}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Consumer name.
        durable: String,
        /// Server message.
        message: String,
    },
}

impl JetStreamSetupError {
    /// Whether trying again later may succeed (the cluster did not answer),
    /// as opposed to a refusal or a manifest error, which needs a change.
    pub fn is_transient(&self) -> bool {
        matches!(self, JetStreamSetupError::Unavailable { .. })
    }
}

/// `or_else(error)`, unless `error` only says the cluster did not answer:
/// then [`JetStreamSetupError::Unavailable`].
fn setup_error(
    stream: &str,
    error: &(dyn std::error::Error + 'static),
    or_else: impl FnOnce(String) -> JetStreamSetupError,
) -> JetStreamSetupError {
    if election::api_unavailable(error) {
        JetStreamSetupError::Unavailable {
            stream: stream.to_string(),
            message: error.to_string(),
        }
    } else {
        or_else(error.to_string())
    }
}

/// Parameters of a plugin's consumer.
pub struct ConsumerSpec<'a> {
    /// Plugin name (for the default durable name).
    pub plugin: &'a str,
    /// The manifest (stream, durable, subjects).
    pub manifest: &'a Manifest,
    /// The plugin's concurrency cap (with the largest pull, sizes
    /// max_ack_pending).
    pub concurrency: u32,
    /// The plugin's per-event time limit (sizes ack_wait).
    pub timeout: Duration,
    /// Replicas of a stream the host creates.
    pub replicas: usize,
    /// Where a consumer that vanished under the running host had got to:
    /// recreated, it starts after this point instead of at the stream's
    /// beginning (which would run every event the stream still keeps again).
    pub resume: Option<ResumeAfter>,
}

/// The last acknowledgement floor seen of a consumer: every message up to
/// `stream_sequence` of the stream created at `stream_created_ms` settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeAfter {
    /// The stream's identity (a stream created again restarts its sequences).
    pub stream_created_ms: u64,
    /// The consumer's ack floor, as a stream sequence.
    pub stream_sequence: u64,
}

/// Time an explicit `ack_wait` must leave beyond the attempt's `timeout`
/// (outbox commit, acks). In-progress acks keep a longer attempt alive, but
/// an `ack_wait` shorter than one attempt would depend on every one of them
/// arriving.
pub const ACK_WAIT_MARGIN: Duration = Duration::from_secs(1);

/// A plugin's consumer, ready to pull from.
pub struct BoundConsumer {
    /// The durable pull consumer.
    pub consumer: consumer::PullConsumer,
    /// Stream name.
    pub stream: String,
    /// The stream's creation time, ms since the Unix epoch (its identity).
    pub stream_created_ms: u64,
    /// The consumer's `ack_wait` (in-progress acks are sent well within it).
    pub ack_wait: Duration,
}

/// The `ack_wait` for a plugin: the manifest's (checked against the time
/// limit), else one sized from `timeout`.
pub fn ack_wait_for(
    explicit: Option<Duration>,
    timeout: Duration,
) -> Result<Duration, JetStreamSetupError> {
    match explicit {
        Some(ack_wait) if ack_wait < timeout + ACK_WAIT_MARGIN => {
            Err(JetStreamSetupError::AckWaitTooShort {
                ack_wait,
                timeout,
                margin: ACK_WAIT_MARGIN,
            })
        }
        Some(ack_wait) => Ok(ack_wait),
        None => Ok((timeout * 2 + Duration::from_secs(10)).max(Duration::from_secs(30))),
    }
}

/// Milliseconds since the Unix epoch of a stream's creation time.
fn created_ms(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Get or create the plugin's durable pull consumer (and its stream if
/// allowed), updating an existing consumer whose settings differ.
pub async fn durable_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec<'_>,
) -> Result<BoundConsumer, JetStreamSetupError> {
    let settings = spec
        .manifest
        .jetstream
        .as_ref()
        .expect("jetstream mode has settings");
    let ack_wait = ack_wait_for(settings.ack_wait, spec.timeout)?;
    let stream_name = settings.stream.clone();
    let mut stream = if settings.create_stream {
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: spec.manifest.subjects.clone(),
            storage: stream::StorageType::File,
            num_replicas: spec.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            setup_error(&stream_name, &e, |message| {
                JetStreamSetupError::StreamCreate {
                    stream: stream_name.clone(),
                    message,
                }
            })
        })?
    } else {
        js.get_stream(&stream_name).await.map_err(|e| {
            setup_error(&stream_name, &e, |message| {
                JetStreamSetupError::StreamMissing {
                    stream: stream_name.clone(),
                    message,
                }
            })
        })?
    };
    let stream_created_ms = match stream.info().await {
        Ok(info) => created_ms(info),
        Err(e) => {
            return Err(setup_error(&stream_name, &e, |message| {
                JetStreamSetupError::StreamMissing {
                    stream: stream_name.clone(),
                    message,
                }
            }));
        }
    };
    let durable = spec
        .manifest
        .durable_name(spec.plugin)
        .expect("jetstream mode has a durable");
    // Only a new consumer takes the start position: it is not compared, and
    // an update keeps the existing one, like the other settings the server
    // refuses to change (the ack policy is compared: one other than explicit
    // is refused loudly rather than bound as at-most-once).
    let deliver_policy = match spec.resume {
        Some(resume) if resume.stream_created_ms == stream_created_ms => {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: resume.stream_sequence + 1,
            }
        }
        _ => consumer::DeliverPolicy::All,
    };
    let config = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        deliver_policy,
        description: Some(format!("sluice plugin {}", spec.plugin)),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: crate::trigger::pull_depth::max_ack_pending_for(spec.concurrency),
        filter_subjects: spec.manifest.subjects.clone(),
        ..Default::default()
    };
    let consumer_error = |message: String| JetStreamSetupError::Consumer {
        stream: stream_name.clone(),
        durable: durable.clone(),
        message,
    };
    let consumer = match stream.consumer_info(&durable).await {
        Ok(existing) if differs(&existing.config, &config) => {
            tracing::info!(
                plugin = spec.plugin,
                durable,
                "updating the durable consumer to the manifest's settings"
            );
            let config = consumer::pull::Config {
                deliver_policy: existing.config.deliver_policy,
                replay_policy: existing.config.replay_policy,
                max_waiting: existing.config.max_waiting,
                memory_storage: existing.config.memory_storage,
                ..config
            };
            stream.update_consumer(config).await.map_err(|e| {
                setup_error(&stream_name, &e, |message| JetStreamSetupError::Update {
                    stream: stream_name.clone(),
                    durable: durable.clone(),
                    message,
                })
            })?
        }
        Ok(_) => stream
            .get_consumer(&durable)
            .await
            .map_err(|e| setup_error(&stream_name, e.as_ref(), consumer_error))?,
        Err(_) => stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| setup_error(&stream_name, &e, consumer_error))?,
    };
    Ok(BoundConsumer {
        consumer,
        stream: stream_name,
        stream_created_ms,
        ack_wait,
    })
}

/// Whether an existing consumer's settings differ from what the manifest asks.
fn differs(existing: &consumer::Config, wanted: &consumer::pull::Config) -> bool {
    let mut have: Vec<&String> = existing.filter_subjects.iter().collect();
    if let Some(single) = Some(&existing.filter_subject).filter(|s| !s.is_empty()) {
        have.push(single);
    }
    let mut want: Vec<&String> = wanted.filter_subjects.iter().collect();
    have.sort();
    want.sort();
    have != want
        || existing.ack_policy != wanted.ack_policy
        || existing.ack_wait != wanted.ack_wait
        || existing.max_ack_pending != wanted.max_ack_pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_ack_wait_must_outlast_the_time_limit() {
        let t = Duration::from_secs(5);
        assert!(matches!(
            ack_wait_for(Some(Duration::from_secs(5)), t),
            Err(JetStreamSetupError::AckWaitTooShort { .. })
        ));
        let e = ack_wait_for(Some(Duration::from_millis(5_999)), t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("jetstream.ack_wait") && e.contains("timeout"),
            "{e}"
        );
        assert_eq!(
            ack_wait_for(Some(Duration::from_secs(10)), t).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(ack_wait_for(None, t).unwrap(), Duration::from_secs(30));
        assert_eq!(
            ack_wait_for(None, Duration::from_secs(60)).unwrap(),
            Duration::from_secs(130)
        );
    }
}
