//! The harness's fault proxy (tests/src/fault_proxy.rs) against a real
//! nats-server, and `dlq replay` when looking up the subject's stream fails
//! (issue 12, failure 11), made with it; and a host whose JetStream setup
//! goes unanswered at start (issue 15: a cluster electing a leader while a
//! host starts), which binds its consumer once the server answers. Also
//! the host's ack bursts (runtime/src/trigger/ack_bursts.rs): one answer
//! per burst, and a lost answer leaving its whole burst unconfirmed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use sluice::config::Overrides;
use sluice::delivery::dead_letter::{self, DEFAULT_DLQ_STREAM, DeadLetter};
use sluice::trigger::ack_bursts::AckBursts;
use sluice_e2e::fault_proxy::FaultProxy;
use sluice_e2e::{
    NatsServer, PluginDir, create_stream, eventually, eventually_async, next_message, setup_done,
    start_host_with, stream_messages, subscribed,
};

const WAIT: Duration = Duration::from_secs(30);

/// A client through `proxy` whose requests give up after `timeout`.
async fn client_through(proxy: &FaultProxy, timeout: Duration) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(timeout))
        .connect(proxy.url())
        .await
        .expect("client connects through the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_passes_pauses_drops_and_cuts_on_command() {
    let nats = NatsServer::start();
    let proxy = FaultProxy::start(&nats.url()).await;
    let client = client_through(&proxy, Duration::from_secs(2)).await;
    let direct = nats.client().await;
    let mut service = subscribed(&direct, "svc").await;
    let mut services = subscribed(&direct, "svc.>").await;
    let responder = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                Some(m) = service.next() => m,
                Some(m) = services.next() => m,
                else => return,
            };
            if let Some(reply) = m.reply {
                direct.publish(reply, m.payload).await.unwrap();
            }
        }
    });

    // Pass: a request goes through and is answered.
    let answer = client.request("svc", "one".into()).await.unwrap();
    assert_eq!(answer.payload, "one");
    assert_eq!(proxy.connections(), 1);

    // Pause: the request is held, so it times out; resume and it works again.
    proxy.pause();
    assert!(client.request("svc", "held".into()).await.is_err());
    proxy.pass();
    let answer = client.request("svc", "two".into()).await.unwrap();
    assert_eq!(answer.payload, "two");

    // Delay: answered, but no sooner than twice the delay (there and back).
    proxy.delay(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let answer = client.request("svc", "slow".into()).await.unwrap();
    assert_eq!(answer.payload, "slow");
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.pass();

    // Drop replies: the request lands (a direct subscriber sees it), its
    // answer is lost whole, and once the mode ends the same connection
    // carries on.
    let watcher = nats.client().await;
    let mut landed = subscribed(&watcher, "svc").await;
    proxy.drop_replies();
    assert!(client.request("svc", "lost".into()).await.is_err());
    let seen = next_message(&mut landed, WAIT, "the request landed").await;
    assert_eq!(seen.payload, "lost");
    assert!(proxy.dropped_bytes() > 0);
    let before = proxy.accepted();
    proxy.pass();
    let answer = client.request("svc", "three".into()).await.unwrap();
    assert_eq!(answer.payload, "three");
    assert_eq!(proxy.accepted(), before, "no reconnect was needed");

    // Per-subject rules: only matching requests (or their replies) are hit.
    let mut writes = subscribed(&watcher, "svc.write").await;
    let mut down = subscribed(&watcher, "svc.down").await;
    proxy.lose_replies_to("svc.write");
    proxy.lose_requests_to("svc.down");
    proxy.delay_replies_to("svc.slow", Duration::from_millis(300));
    assert!(client.request("svc.write", "w".into()).await.is_err());
    let seen = next_message(&mut writes, WAIT, "the write landed").await;
    assert_eq!(seen.payload, "w");
    assert_eq!(proxy.replies_lost(), 1);
    let answer = client.request("svc.read", "r".into()).await.unwrap();
    assert_eq!(answer.payload, "r", "other requests are untouched");
    let started = std::time::Instant::now();
    let answer = client.request("svc.slow", "s".into()).await.unwrap();
    assert_eq!(answer.payload, "s");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(client.request("svc.down", "d".into()).await.is_err());
    assert_eq!(proxy.requests_lost(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), down.next())
            .await
            .is_err(),
        "the lost request never reached the server"
    );
    proxy.clear_rules();
    let answer = client.request("svc.write", "w2".into()).await.unwrap();
    assert_eq!(answer.payload, "w2");

    // Cut and refuse: the client notices and cannot get back in; allow
    // connections again and it reconnects by itself.
    let before = proxy.accepted();
    proxy.refuse(true);
    proxy.cut();
    eventually(WAIT, "the client notices the cut", || {
        client.connection_state() != async_nats::connection::State::Connected
    })
    .await;
    assert_eq!(proxy.connections(), 0);
    assert!(client.request("svc", "down".into()).await.is_err());
    assert_eq!(
        proxy.accepted(),
        before,
        "refused connections are not forwarded"
    );
    proxy.refuse(false);
    eventually(WAIT, "the client reconnects", || {
        client.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    let answer = client.request("svc", "four".into()).await.unwrap();
    assert_eq!(answer.payload, "four");
    responder.abort();
}

/// A dead letter of plugin `plugin` for an event on `subject`.
fn letter(plugin: &str, subject: &str, payload: &'static [u8]) -> DeadLetter {
    DeadLetter {
        plugin: plugin.into(),
        version: "v1".into(),
        subject: subject.into(),
        headers: vec![],
        payload: Bytes::from_static(payload),
        stream: None,
        sequence: None,
        attempts: 1,
        error_class: "permanent".into(),
        error: "test".into(),
        key: "k-1".into(),
        first_failure: SystemTime::now(),
        last_failure: SystemTime::now(),
        trace_id: "t".into(),
        replay: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_stream_lookup_fails_keeps_the_entry_and_publishes_nothing() {
    let nats = NatsServer::start();
    let direct = nats.client().await;
    let direct_js = async_nats::jetstream::new(direct.clone());
    dead_letter::ensure_stream(&direct_js, DEFAULT_DLQ_STREAM, 1)
        .await
        .unwrap();
    create_stream(&direct_js, "ORDERS", &["orders.>"]).await;
    dead_letter::publish(&direct_js, &letter("billing", "orders.created", b"o-1"))
        .await
        .unwrap();
    let mut on_core = subscribed(&direct, "orders.created").await;

    // The operator's CLI talks through the proxy.
    let proxy = FaultProxy::start(&nats.url()).await;
    let client = client_through(&proxy, Duration::from_secs(2)).await;
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    let filter = sluice::dlq::Filter::default();
    let entries = sluice::dlq::list(&js, DEFAULT_DLQ_STREAM, &filter)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);

    // Only the lookup's reply is lost (as in a leader election); everything
    // else, the entry's deletion included, works. The replay must fail and
    // keep the entry, not guess "no stream", publish on core and delete it.
    proxy.lose_replies_to("$JS.API.STREAM.NAMES");
    let result = tokio::time::timeout(
        WAIT,
        sluice::dlq::replay_one(&client, &js, DEFAULT_DLQ_STREAM, &entries[0]),
    )
    .await
    .expect("the replay fails in bounded time");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_core.next())
            .await
            .is_err(),
        "nothing was published on core NATS (bypassing the stream)"
    );
    let error = result
        .expect_err("a failed lookup fails the replay")
        .to_string();
    assert!(
        error.contains("entry is kept")
            && error.contains("orders.created")
            && error.contains("cannot tell whether a stream captures"),
        "{error}"
    );
    assert_eq!(proxy.replies_lost(), 1);
    proxy.clear_rules();
    assert_eq!(
        stream_messages(&direct_js, DEFAULT_DLQ_STREAM).await,
        1,
        "the entry is kept"
    );
    assert_eq!(stream_messages(&direct_js, "ORDERS").await, 0);

    // With the broker answering again, the same entry replays into the stream.
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    sluice::dlq::replay_one(&client, &js, DEFAULT_DLQ_STREAM, &entries[0])
        .await
        .unwrap();
    assert_eq!(stream_messages(&direct_js, "ORDERS").await, 1);
    assert_eq!(stream_messages(&direct_js, DEFAULT_DLQ_STREAM).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_is_still_replayed_on_core() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    dead_letter::ensure_stream(&js, DEFAULT_DLQ_STREAM, 1)
        .await
        .unwrap();
    dead_letter::publish(&js, &letter("jobs", "jobs.a", b"j-1"))
        .await
        .unwrap();
    let mut on_core = subscribed(&client, "jobs.a").await;
    let entries = sluice::dlq::list(&js, DEFAULT_DLQ_STREAM, &Default::default())
        .await
        .unwrap();
    sluice::dlq::replay_one(&client, &js, DEFAULT_DLQ_STREAM, &entries[0])
        .await
        .unwrap();
    let replayed = next_message(&mut on_core, WAIT, "the replay on core").await;
    assert_eq!(replayed.payload, "j-1");
    assert_eq!(stream_messages(&js, DEFAULT_DLQ_STREAM).await, 0);
}

/// A JetStream plugin whose stream lookup goes unanswered while the host
/// starts (the request times out, as it does while a cluster elects a
/// leader) is not given up on: the host asks again with backoff and, once
/// the server answers, creates the stream, binds the consumer and handles
/// the events. Before, the plugin stayed unbound until its file changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_plugin_whose_setup_goes_unanswered_at_start_consumes_once_the_server_answers()
{
    let nats = NatsServer::start();
    let direct_js = async_nats::jetstream::new(nats.client().await);
    create_stream(&direct_js, "DONE", &["orders.enriched.>"]).await;
    let proxy = FaultProxy::start(&nats.url()).await;
    // Every lookup of the plugin's stream lands, and its answer is lost.
    proxy.lose_replies_to("$JS.API.STREAM.INFO.ORDERS");
    let dir = PluginDir::new();
    let host = enrich_host_through(&proxy, &dir).await;
    // A second lookup means the first one timed out and was tried again.
    eventually_async!(
        WAIT,
        "the stream lookup asked again after going unanswered",
        proxy.replies_lost() >= 2
    );
    proxy.clear_rules();

    eventually_async!(
        WAIT,
        "the host created the plugin's stream once the server answered",
        direct_js.get_stream("ORDERS").await.is_ok()
    );
    direct_js
        .publish(
            "orders.created",
            r#"{"order_id":1,"quantity":2,"unit_price":1.5}"#.into(),
        )
        .await
        .unwrap()
        .await
        .expect("ORDERS accepts the order");
    eventually_async!(
        WAIT,
        "the derived event in DONE",
        stream_messages(&direct_js, "DONE").await == 1
    );
    // Counted once its outbox is confirmed, a moment after DONE holds it.
    eventually(WAIT, "the event counted as handled", || {
        host.stats("enrich").unwrap().succeeded == 1
    })
    .await;
    host.shutdown().await.unwrap();
}

/// A held lease's write (renewal, release, completion: `KvStore::write`)
/// that lands but whose reply is lost: the re-read finds exactly what was
/// written, the lease takes that revision, and its next compare-and-set
/// write succeeds (before, every later write of the lease failed on the stale
/// revision). A write that never reached the server stays an error, and the
/// lease keeps the revision it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_lease_write_whose_reply_is_lost_adopts_the_revision_it_landed_at() {
    use sluice::delivery::dedup::{DedupStore, Record, State};
    use sluice::delivery::dedup_kv::KvStore;

    let nats = NatsServer::start();
    let proxy = FaultProxy::start(&nats.url()).await;
    let mut js = async_nats::jetstream::new(client_through(&proxy, Duration::from_secs(1)).await);
    js.set_timeout(Duration::from_secs(1));
    let store = KvStore::open(&js, "lost-replies", Duration::from_secs(600), 1)
        .await
        .expect("the bucket opens");
    let record = |state: State, attempts: u32| Record {
        state,
        lease_until_ms: None,
        holder: Some("holder-1".into()),
        attempts,
        first_failure_ms: None,
        replay: 0,
        gave_up: None,
    };
    let mut lease = store
        .create("plugin", "key-1", record(State::InProgress, 1))
        .await
        .expect("the record is created");
    let created = lease.revision;

    proxy.lose_replies_to("$KV.lost-replies.");
    store
        .write(&mut lease, record(State::InProgress, 2))
        .await
        .expect("a write that landed is ours although its reply was lost");
    assert_eq!(proxy.replies_lost(), 1, "the write's reply was lost");
    proxy.clear_rules();
    assert!(lease.revision > created, "the lease took the new revision");
    let direct = async_nats::jetstream::new(nats.client().await);
    let kv = direct.get_key_value("lost-replies").await.unwrap();
    let slot = kv
        .keys()
        .await
        .unwrap()
        .next()
        .await
        .expect("one record")
        .unwrap();
    let stored = kv.entry(slot.as_str()).await.unwrap().expect("the record");
    assert_eq!(stored.revision, lease.revision);

    // The lease's next write is a compare-and-set on that revision: it succeeds.
    store
        .write(&mut lease, record(State::Completed, 2))
        .await
        .expect("the next write of the lease succeeds");
    let stored = kv.entry(slot.as_str()).await.unwrap().unwrap();
    let written: Record = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(written.state, State::Completed);

    // A write that never arrived is an error; the lease is unchanged.
    let before = lease.clone();
    proxy.lose_requests_to("$KV.lost-replies.");
    let lost = store.write(&mut lease, record(State::Open, 3)).await;
    proxy.clear_rules();
    assert!(lost.is_err(), "a lost write is not taken as written");
    assert_eq!(lease, before);
    let stored = kv.entry(slot.as_str()).await.unwrap().unwrap();
    assert_eq!(stored.revision, lease.revision, "nothing was written");
}

/// Issue 16: the first delivery of a JetStream message keyed by its own
/// stream position is settled by a confirmed ack, without a completion
/// record (one KV round trip per event saved); when the ack's confirmation
/// is lost, the host cannot know the ack landed, so it records the
/// completion instead and a redelivery would be skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_delivery_is_settled_by_a_confirmed_ack_and_recorded_only_when_the_confirmation_is_lost()
 {
    const DEDUP: &str = "KV_sluice-dedup";
    let nats = NatsServer::start();
    let direct_js = async_nats::jetstream::new(nats.client().await);
    create_stream(&direct_js, "DONE", &["orders.enriched.>"]).await;
    let proxy = FaultProxy::start(&nats.url()).await;
    let dir = PluginDir::new();
    let host = enrich_host_through(&proxy, &dir).await;
    eventually_async!(
        WAIT,
        "the host created the plugin's stream",
        direct_js.get_stream("ORDERS").await.is_ok()
    );
    // A first delivery handed back while the KV bucket opens would be
    // claimed on its redelivery, and leave a record this test counts.
    setup_done(&host).await;
    let order = |id: u32| format!(r#"{{"order_id":{id},"quantity":2,"unit_price":1.5}}"#);
    let publish = |id: u32| {
        let js = direct_js.clone();
        let payload = order(id);
        async move {
            js.publish("orders.created", payload.into())
                .await
                .unwrap()
                .await
                .expect("ORDERS accepts the order")
        }
    };

    // Confirmed: acknowledged, and the dedup bucket holds nothing.
    publish(1).await;
    eventually_async!(
        WAIT,
        "the first event handled and acknowledged",
        stream_messages(&direct_js, "DONE").await == 1
            && sluice_e2e::consumer_backlog(&direct_js, "ORDERS", "sluice-enrich").await == (0, 0)
    );
    assert_eq!(
        stream_messages(&direct_js, DEDUP).await,
        0,
        "a confirmed first delivery writes no completion record"
    );

    // The confirmation is lost: the completion is recorded instead.
    proxy.lose_replies_to("$JS.ACK.");
    publish(2).await;
    eventually(WAIT, "the ack's confirmation was lost", || {
        proxy.replies_lost() >= 1
    })
    .await;
    eventually_async!(
        WAIT,
        "the completion recorded after the unconfirmed ack",
        stream_messages(&direct_js, DEDUP).await == 1
    );
    proxy.clear_rules();
    eventually_async!(
        WAIT,
        "the second event acknowledged",
        sluice_e2e::consumer_backlog(&direct_js, "ORDERS", "sluice-enrich").await == (0, 0)
    );
    let stats = host.stats("enrich").unwrap();
    assert_eq!(stats.succeeded, 2, "each event ran once: {stats:?}");
    assert_eq!(stream_messages(&direct_js, "DONE").await, 2);
    host.shutdown().await.unwrap();
}

/// A host reaching NATS through `proxy` and serving `enrich` from `dir` in
/// JetStream mode: stream `ORDERS` (created by the host), derived events on
/// `orders.enriched.>`.
async fn enrich_host_through(proxy: &FaultProxy, dir: &PluginDir) -> sluice::service::HostHandle {
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]\n\
         mode = \"jetstream\"\n[jetstream]\nstream = \"ORDERS\"\ncreate_stream = true\n",
    );
    start_host_with(Overrides {
        nats_url: Some(proxy.url()),
        plugins: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    })
    .await
}

/// The host's ack task on `client`, answers awaited at most `wait`, and the
/// tracker it runs in.
fn ack_bursts(
    client: &async_nats::Client,
    wait: Duration,
) -> (tokio_util::task::TaskTracker, AckBursts) {
    let tasks = tokio_util::task::TaskTracker::new();
    let acks = AckBursts::start(client.clone(), wait, &tasks);
    (tasks, acks)
}

/// `count` messages on a fresh stream `name`, pulled (not acknowledged) by
/// a durable explicit-ack consumer: (its JetStream handle, the messages).
async fn pulled(
    js: &async_nats::jetstream::Context,
    name: &str,
    count: usize,
) -> (
    async_nats::jetstream::consumer::PullConsumer,
    Vec<async_nats::jetstream::Message>,
) {
    let subject = format!("{}.events", name.to_lowercase());
    create_stream(js, name, &[subject.as_str()]).await;
    for i in 0..count {
        js.publish(subject.clone(), format!("event {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("confirm".into()),
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = Vec::new();
    while messages.len() < count {
        let mut batch = consumer
            .fetch()
            .max_messages(count - messages.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            messages.push(message.unwrap());
        }
    }
    (consumer, messages)
}

// One thread: the acks are all queued before the ack task runs, so how
// they form bursts does not depend on how loaded the machine is.
#[tokio::test]
async fn a_burst_of_acks_is_confirmed_by_fewer_answers_and_every_ack_is_applied() {
    const COUNT: usize = 300;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let (mut consumer, messages) = pulled(&js, "BURST", COUNT).await;
    // Every answer the server sends to the host's inbox, seen from outside.
    let watcher = nats.client().await;
    let mut answers = subscribed(&watcher, "_INBOX.>").await;

    let (tasks, acks) = ack_bursts(&client, Duration::from_secs(5));
    // Every third ack is plain (a redelivery's, or with dedup off): it goes
    // out with the bursts and asks for nothing.
    let (plain, confirmed): (Vec<_>, Vec<_>) = messages
        .iter()
        .map(|m| m.reply.clone().expect("a reply subject"))
        .enumerate()
        .partition(|(i, _)| i % 3 == 0);
    for (_, reply) in plain {
        assert!(acks.ack(reply), "queued while the ack task runs");
    }
    let waiting = confirmed.into_iter().map(|(_, reply)| {
        let acks = acks.clone();
        tokio::spawn(async move { acks.ack_confirmed(reply).await })
    });
    let outcomes = futures::future::join_all(waiting).await;
    for outcome in outcomes {
        outcome
            .unwrap()
            .expect("every ack of the burst is confirmed");
    }
    let info = consumer.info().await.unwrap().clone();
    assert_eq!(
        info.num_ack_pending, 0,
        "every ack, plain or confirmed, was applied"
    );
    assert_eq!(info.ack_floor.stream_sequence, COUNT as u64);
    // Once the last handle is gone, the task ends (the host waits for it).
    drop(acks);
    tasks.close();
    tokio::time::timeout(WAIT, tasks.wait())
        .await
        .expect("the ack task ends when its last handle is dropped");

    let mut answered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), answers.next()).await {
        answered += 1;
    }
    assert!(
        (1..COUNT).contains(&answered),
        "{COUNT} acks sent together are confirmed by fewer answers (got {answered})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_whose_answer_is_lost_is_unconfirmed_for_every_ack_in_it() {
    const COUNT: usize = 40;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let (mut consumer, messages) = pulled(&js, "LOST", COUNT).await;
    let proxy = FaultProxy::start(&nats.url()).await;
    let client = client_through(&proxy, Duration::from_secs(5)).await;
    proxy.lose_replies_to("$JS.ACK.");

    let (_tasks, acks) = ack_bursts(&client, Duration::from_millis(500));
    let waiting = messages.iter().map(|m| {
        let (acks, reply) = (acks.clone(), m.reply.clone().expect("a reply subject"));
        tokio::spawn(async move { acks.ack_confirmed(reply).await })
    });
    let outcomes = futures::future::join_all(waiting).await;
    for outcome in outcomes {
        let why = outcome
            .unwrap()
            .expect_err("no ack is called confirmed when its burst's answer is lost");
        assert!(why.contains("no confirmation"), "says why: {why}");
    }
    assert!(proxy.replies_lost() >= 1);
    // The acks themselves landed: unconfirmed means not known, not undone.
    eventually_async!(
        WAIT,
        "every ack was applied though none was confirmed",
        consumer.info().await.unwrap().num_ack_pending == 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_acks_alone_are_all_sent_in_their_bursts() {
    const COUNT: usize = 50;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let (mut consumer, messages) = pulled(&js, "PLAIN", COUNT).await;
    let (_tasks, acks) = ack_bursts(&client, Duration::from_secs(5));
    // One at a time and all at once: a burst of one and bursts of many,
    // none of them asking for an answer.
    let (first, rest) = messages.split_at(1);
    assert!(acks.ack(first[0].reply.clone().unwrap()));
    eventually_async!(
        WAIT,
        "a lone plain ack is sent",
        consumer.info().await.unwrap().num_ack_pending == COUNT - 1
    );
    for message in rest {
        assert!(acks.ack(message.reply.clone().unwrap()));
    }
    eventually_async!(
        WAIT,
        "every plain ack is sent, the last of each burst included",
        consumer.info().await.unwrap().num_ack_pending == 0
    );
}
