//! Requests end to end (contract 0.2.0 `requester`): a plugin (`ask`) asks
//! another plugin (`respond`) and gets its answer; identical requests are
//! each answered; a subject outside the manifest's `request` grants, or
//! outside the operator's `request_allow`, is refused and counted.

use std::time::Duration;

use bytes::Bytes;
use sluice_e2e::{NatsServer, PluginDir, next_message, start_host, start_host_configured};

const WAIT: Duration = Duration::from_secs(20);

const ASK: &str = "subjects = [\"ask.>\"]\npublish = [\"asked.>\"]\nrequest = [\"svc.>\"]";
const RESPOND: &str = "subjects = [\"svc.>\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_asks_another_and_publishes_the_answer_and_identical_requests_are_each_answered() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("ask", "ask", ASK)
        .add("respond", "respond", RESPOND);
    let _host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut asked = client.subscribe("asked.svc.echo").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("ask.svc.echo", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let msg = next_message(&mut asked, WAIT, "the answer the plugin got").await;
    assert_eq!(&msg.payload[..], b"re: hello");

    let (a, b) = tokio::join!(
        client.request("svc.echo", Bytes::from_static(b"same")),
        client.request("svc.echo", Bytes::from_static(b"same")),
    );
    assert_eq!(&a.unwrap().payload[..], b"re: same");
    assert_eq!(&b.unwrap().payload[..], b"re: same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outside_the_grants_is_refused_and_counted() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("ask", "ask", ASK)
        .add("respond", "respond", "subjects = [\"other.>\"]");
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut asked = client.subscribe("asked.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("ask.other.echo", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let msg = next_message(&mut asked, WAIT, "the refusal").await;
    let text = String::from_utf8_lossy(&msg.payload);
    assert!(
        text.starts_with("refused:") && text.contains("other.echo") && text.contains("request"),
        "{text}"
    );
    assert_eq!(host.stats("ask").unwrap().refused_requests, 1);
    // The reserved inboxes are never requestable, whatever the grants say.
    client
        .publish("ask._INBOX.x", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let msg = next_message(&mut asked, WAIT, "the reserved refusal").await;
    assert!(String::from_utf8_lossy(&msg.payload).contains("reserved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_request_allow_caps_the_manifest() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("ask", "ask", ASK)
        .add("respond", "respond", RESPOND);
    let host = start_host_configured(
        &nats.url(),
        dir.path(),
        "[plugin.ask]\nrequest_allow = [\"svc.allowed\"]",
    )
    .await;
    let client = nats.client().await;
    let mut asked = client.subscribe("asked.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("ask.svc.echo", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let msg = next_message(&mut asked, WAIT, "the operator's refusal").await;
    let text = String::from_utf8_lossy(&msg.payload);
    assert!(text.contains("request_allow"), "{text}");
    client
        .publish("ask.svc.allowed", Bytes::from_static(b"y"))
        .await
        .unwrap();
    let msg = next_message(&mut asked, WAIT, "the allowed answer").await;
    assert_eq!(&msg.payload[..], b"re: y");
    assert_eq!(host.stats("ask").unwrap().refused_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_is_cut_at_the_attempts_deadline() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "ask",
        "ask",
        &format!("{ASK}\ntimeout = \"2s\"\n[retry]\nmax_attempts = 1"),
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    // Listens, so the request has a responder, but never answers.
    let _silent = client.subscribe("svc.slow").await.unwrap();
    client.flush().await.unwrap();
    let sent = std::time::Instant::now();
    client
        .publish("ask.svc.slow", Bytes::from_static(b"anyone?"))
        .await
        .unwrap();
    let registry = host.registry();
    sluice_e2e::eventually(WAIT, "the unanswered event is given up", || {
        registry.stats("ask").is_some_and(|s| s.gave_up == 1)
    })
    .await;
    let stats = registry.stats("ask").unwrap();
    assert_eq!(
        stats
            .failures
            .get(sluice::engine::invoke::FailureClass::Retryable),
        1,
        "the plugin got `timed-out` back within its attempt and failed as retryable, \
         rather than being killed at the deadline: {stats:?}"
    );
    assert!(sent.elapsed() < WAIT);
}
