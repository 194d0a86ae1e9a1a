//! JetStream plumbing: the durable pull consumer of a plugin (and its stream,
//! when the manifest asks the host to create it).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use thiserror::Error;

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

/// Parameters of a plugin's consumer.
pub struct ConsumerSpec<'a> {
    /// Plugin name (for the default durable name).
    pub plugin: &'a str,
    /// The manifest (stream, durable, subjects).
    pub manifest: &'a Manifest,
    /// The plugin's concurrency cap (sizes max_ack_pending).
    pub concurrency: u32,
    /// The plugin's per-event time limit (sizes ack_wait).
    pub timeout: Duration,
}

/// Get or create the plugin's durable pull consumer (and its stream if allowed).
pub async fn durable_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec<'_>,
) -> Result<consumer::PullConsumer, JetStreamSetupError> {
    let settings = spec
        .manifest
        .jetstream
        .as_ref()
        .expect("jetstream mode has settings");
    let stream_name = settings.stream.clone();
    let stream = if settings.create_stream {
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: spec.manifest.subjects.clone(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| JetStreamSetupError::StreamCreate {
            stream: stream_name.clone(),
            message: e.to_string(),
        })?
    } else {
        js.get_stream(&stream_name)
            .await
            .map_err(|e| JetStreamSetupError::StreamMissing {
                stream: stream_name.clone(),
                message: e.to_string(),
            })?
    };
    let durable = spec
        .manifest
        .durable_name(spec.plugin)
        .expect("jetstream mode has a durable");
    // ack_wait must outlast an attempt plus its outbox commit, or the server
    // would redeliver an event that is still being handled.
    let ack_wait = settings.ack_wait.unwrap_or_else(|| {
        (spec.timeout * 2 + Duration::from_secs(10)).max(Duration::from_secs(30))
    });
    let config = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        description: Some(format!("sluice plugin {}", spec.plugin)),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: i64::from(spec.concurrency) * 4,
        filter_subjects: spec.manifest.subjects.clone(),
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&durable, config)
        .await
        .map_err(|e| JetStreamSetupError::Consumer {
            stream: stream_name,
            durable,
            message: e.to_string(),
        })
}
