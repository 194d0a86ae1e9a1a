//! Acknowledgements in bursts, one confirmation per burst.
//!
//! Every successful JetStream event's ack goes through here, so the acks of
//! events that finish together leave in one write: sent by each event's own
//! task, each ack woke the connection and cost it a write of its own.
//!
//! A first delivery keyed by its own stream position is settled by an ack
//! the server confirms: the confirmation is its dedup record (see
//! [`super::jetstream`]). Asking for an answer to every ack costs the server
//! a reply and the host a response to route, per event, which was a third of
//! the host's throughput. So the acks that are ready together go out plain,
//! in the order they came, and only the last of them asks for an answer.
//!
//! Why one answer covers the burst: every ack goes out on the host's one
//! connection, and a consumer applies the acks that one connection sent in
//! the order it sent them (the server reads a connection in order and queues
//! a consumer's acks in arrival order). So when the last ack of a burst is
//! answered, every earlier one was applied before it. A burst whose answer
//! does not come within the wait (connection lost, server slow) is reported
//! unconfirmed to every ack in it, and each writes its dedup record instead.
//!
//! Bursts overlap: the next one goes out while the previous waits for its
//! answer, so confirming never slows the acks down.

use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Most acks one answer confirms: bounds how many records a lost answer
/// costs.
const MOST_PER_BURST: usize = 256;

/// The acknowledgement payload.
const ACK: &[u8] = b"+ACK";

/// Sends acks, and tells a sender who asks once the server confirmed its
/// ack. Cheap to share; its task ends when the last handle is dropped and
/// every pending answer has come (or timed out).
#[derive(Clone)]
pub struct AckBursts {
    queue: mpsc::UnboundedSender<Waiting>,
}

/// One ack waiting to be sent (and confirmed, when asked).
struct Waiting {
    reply: Subject,
    confirmed: Option<oneshot::Sender<Result<(), String>>>,
}

impl AckBursts {
    /// Start sending acks on `client`, each answer awaited at most `wait`.
    /// The task is one of `tasks`, so a host that waits for its tasks
    /// before closing the connection sends every queued ack first.
    pub fn start(client: Client, wait: Duration, tasks: &TaskTracker) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tasks.spawn(run(client, waiting, wait));
        Self { queue }
    }

    /// Acknowledge the message whose reply subject is `reply`, with the
    /// next burst; `false` when the host is stopping and the ack was not
    /// queued (the caller acknowledges it itself).
    pub fn ack(&self, reply: Subject) -> bool {
        self.queue
            .send(Waiting {
                reply,
                confirmed: None,
            })
            .is_ok()
    }

    /// Acknowledge the message whose reply subject is `reply`; `Ok` once the
    /// server confirmed the ack was applied, `Err` (why) when that is not
    /// known: the ack may or may not have been applied.
    pub async fn ack_confirmed(&self, reply: Subject) -> Result<(), String> {
        let (confirmed, answer) = oneshot::channel();
        self.queue
            .send(Waiting {
                reply,
                confirmed: Some(confirmed),
            })
            .map_err(|_| "the host is stopping (acks are no longer confirmed)".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the ack confirmation task ended".into()))
    }
}

async fn run(client: Client, mut waiting: mpsc::UnboundedReceiver<Waiting>, wait: Duration) {
    let mut answers = FuturesUnordered::new();
    let mut burst = Vec::with_capacity(MOST_PER_BURST);
    let mut open = true;
    while open || !answers.is_empty() {
        tokio::select! {
            received = waiting.recv_many(&mut burst, MOST_PER_BURST), if open => {
                if received == 0 {
                    open = false;
                } else {
                    // Let the events finishing now queue their acks too.
                    tokio::task::yield_now().await;
                    while burst.len() < MOST_PER_BURST {
                        match waiting.try_recv() {
                            Ok(more) => burst.push(more),
                            Err(_) => break,
                        }
                    }
                    answers.push(send_burst(&client, std::mem::take(&mut burst), wait).await);
                    burst.reserve(MOST_PER_BURST);
                }
            }
            Some(()) = answers.next(), if !answers.is_empty() => {}
        }
    }
}

/// Send every ack of `burst` plain but the last, which asks for an answer
/// when any ack of the burst wants confirming; the returned future waits
/// for that answer and tells those acks.
async fn send_burst(
    client: &Client,
    mut burst: Vec<Waiting>,
    wait: Duration,
) -> impl std::future::Future<Output = ()> + use<> {
    let confirming = burst.iter().any(|ack| ack.confirmed.is_some());
    let last = if confirming { burst.pop() } else { None };
    let mut sent = Vec::with_capacity(burst.len() + 1);
    for ack in burst {
        match client.publish(ack.reply, Bytes::from_static(ACK)).await {
            Ok(()) => sent.extend(ack.confirmed),
            Err(e) => match ack.confirmed {
                Some(confirmed) => {
                    let _ = confirmed.send(Err(format!("ack not sent: {e}")));
                }
                // The server redelivers after ack_wait; the dedup record
                // (or the handler's idempotency) makes that safe.
                None => tracing::warn!(
                    "acknowledgement not sent: {e}; the server will redeliver after ack_wait"
                ),
            },
        }
    }
    let last = last.map(|last| {
        sent.extend(last.confirmed);
        last.reply
    });
    let client = client.clone();
    async move {
        let Some(reply) = last else { return };
        let request = client.request(reply, Bytes::from_static(ACK));
        let outcome = match tokio::time::timeout(wait, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("no confirmation: {e}")),
            Err(_) => Err(format!("no confirmation within {wait:?}")),
        };
        for confirmed in sent {
            let _ = confirmed.send(outcome.clone());
        }
    }
}
