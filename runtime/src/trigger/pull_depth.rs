//! How many messages one JetStream pull asks for, sized by how fast the
//! plugin drains them.
//!
//! The pulls in flight are the pipeline between the server and the plugin:
//! while the host handles one batch, the next must already be on its way,
//! and the server delivers only while the consumer's unacknowledged
//! messages stay under `max_ack_pending`. A plugin that handles 100,000
//! events a second goes through a batch of 64 in well under a millisecond,
//! then waits for the round trip of its acks and the next pull: measured on
//! 2 cores, a no-op plugin with `isolation = "reuse"` ran at 0.45× a native
//! consumer with pulls of 64 and at 0.65× with pulls of 512
//! (docs/benchmarks.md, issue 16).
//!
//! A deep pipeline is wrong for a slow plugin, though: messages wait in one
//! host (kept alive, but not handled) while another host of the same
//! consumer may be idle, and each holds its payload in memory. So a pull
//! asks for about [`QUEUE_TIME`] of the plugin's recent pace, never fewer
//! than twice its `max_concurrency` (what it always asked for) and never
//! more than [`MOST_PER_PULL`], nor more than [`BYTES_PER_PULL`] worth of
//! the messages seen lately. A slow plugin keeps pulls of twice its slots;
//! a fast one grows to the largest within a few pulls, and shrinks back
//! when its traffic does (an idle pull brings nothing: the pace halves).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How much of the plugin's recent pace one pull asks for.
pub const QUEUE_TIME: Duration = Duration::from_millis(5);
/// The most messages one pull asks for (unless `max_concurrency` asks for
/// more): two pulls in flight keep up to twice this in one host.
pub const MOST_PER_PULL: usize = 512;
/// Payload bytes one pull may bring, judged by the messages seen lately:
/// bounds the memory a plugin of large messages holds ahead of its slots.
pub const BYTES_PER_PULL: usize = 8 << 20;
/// How often the pace is measured.
const WINDOW: Duration = Duration::from_millis(50);

/// The consumer's `max_ack_pending` for a plugin with `max_concurrency`
/// slots: enough for two of the largest pulls in flight, and four times the
/// slots for a plugin with more than that. It bounds the messages out at
/// once across every host of the consumer together.
pub fn max_ack_pending_for(max_concurrency: u32) -> i64 {
    (i64::from(max_concurrency) * 4).max(2 * MOST_PER_PULL as i64)
}

/// The recent pace of one consumer's pulls.
#[derive(Debug)]
pub struct PullDepth {
    window_start: Instant,
    messages: u64,
    bytes: u64,
    /// Messages per second, smoothed over the windows so far.
    pace: f64,
    /// Bytes per message, smoothed likewise (0 until a message was seen).
    message_bytes: f64,
}

impl PullDepth {
    /// Nothing seen yet, as of `now`: pulls start at their floor.
    pub fn new(now: Instant) -> Self {
        PullDepth {
            window_start: now,
            messages: 0,
            bytes: 0,
            pace: 0.0,
            message_bytes: 0.0,
        }
    }

    /// A pull ended at `now`, having brought `messages` of `bytes` in all.
    pub fn pulled(&mut self, messages: usize, bytes: usize, now: Instant) {
        self.messages += messages as u64;
        self.bytes += bytes as u64;
        self.fold(now);
    }

    /// Messages the next pull asks for, at least `floor` (twice the plugin's
    /// slots).
    pub fn size(&mut self, floor: usize, now: Instant) -> usize {
        self.fold(now);
        let by_pace = (self.pace * QUEUE_TIME.as_secs_f64()) as usize;
        let by_bytes = if self.message_bytes > 0.0 {
            (BYTES_PER_PULL as f64 / self.message_bytes) as usize
        } else {
            MOST_PER_PULL
        };
        by_pace.min(MOST_PER_PULL).min(by_bytes).max(floor)
    }

    /// Close the window if it is over: its pace is averaged with the pace
    /// before it.
    fn fold(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let pace = self.messages as f64 / elapsed.as_secs_f64();
        self.pace = (self.pace + pace) / 2.0;
        if self.messages > 0 {
            let size = self.bytes as f64 / self.messages as f64;
            self.message_bytes = if self.message_bytes > 0.0 {
                (self.message_bytes + size) / 2.0
            } else {
                size
            };
        }
        self.window_start = now;
        self.messages = 0;
        self.bytes = 0;
    }
}

/// What one consumer's host holds: messages received and not settled yet,
/// and messages its pulls in flight asked for and have not brought yet. A
/// pull is made only while there is room for it (see [`Holding::room_for`]):
/// the server's `max_ack_pending` is shared by every host and sized for the
/// largest pulls, so it no longer keeps a slow plugin's host from pulling
/// a backlog it cannot start.
#[derive(Debug, Default)]
pub struct Holding {
    held: AtomicUsize,
    asked: AtomicUsize,
    freed: Notify,
}

impl Holding {
    /// Whether a pull of `n` fits: what is held and asked for, with it,
    /// stays within `limit` (the pulls in flight times the pull size, which
    /// for a slow plugin is four times its slots, as `max_ack_pending` used
    /// to be).
    pub fn room_for(&self, n: usize, limit: usize) -> bool {
        self.held.load(Ordering::Relaxed) + self.asked.load(Ordering::Relaxed) + n <= limit
    }

    /// A pull asking for `n` messages is made.
    pub fn asking(&self, n: usize) {
        self.asked.fetch_add(n, Ordering::Relaxed);
    }

    /// A pull brought one of the messages it asked for.
    pub fn brought_one(&self) {
        self.asked.fetch_sub(1, Ordering::Relaxed);
    }

    /// A pull that asked for `asked` messages ended having brought
    /// `brought` (each already counted by [`Holding::brought_one`]).
    pub fn pull_ended(&self, asked: usize, brought: usize) {
        self.asked
            .fetch_sub(asked.saturating_sub(brought), Ordering::Relaxed);
    }

    /// A message is held until the returned guard is dropped (its event
    /// settled, or it was handed back).
    pub fn hold(self: &Arc<Self>) -> HeldMessage {
        self.held.fetch_add(1, Ordering::Relaxed);
        HeldMessage(self.clone())
    }

    /// Resolves after a held message was let go (or at once, if one was let
    /// go since the last call).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Messages held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One message held by its host; see [`Holding::hold`].
#[derive(Debug)]
pub struct HeldMessage(Arc<Holding>);

impl Drop for HeldMessage {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pace` messages/s of `bytes` each for `for_`, in pulls every
    /// 5 ms; the size asked for at the end.
    fn settle(
        depth: &mut PullDepth,
        start: Instant,
        pace: u64,
        bytes: usize,
        for_: Duration,
        floor: usize,
    ) -> (Instant, usize) {
        let step = Duration::from_millis(5);
        let per_pull = (pace as f64 * step.as_secs_f64()) as usize;
        let mut now = start;
        while now < start + for_ {
            now += step;
            depth.pulled(per_pull, per_pull * bytes, now);
        }
        (now, depth.size(floor, now))
    }

    /// The size a fresh consumer asks for after half a second at `pace`
    /// messages/s of `bytes` each.
    fn size_after_half_a_second(pace: u64, bytes: usize, floor: usize) -> usize {
        let start = Instant::now();
        let mut depth = PullDepth::new(start);
        settle(
            &mut depth,
            start,
            pace,
            bytes,
            Duration::from_millis(500),
            floor,
        )
        .1
    }

    #[test]
    fn nothing_seen_asks_for_the_floor() {
        let now = Instant::now();
        let mut depth = PullDepth::new(now);
        assert_eq!(depth.size(64, now), 64);
        assert_eq!(depth.size(64, now + Duration::from_secs(1)), 64);
    }

    #[test]
    fn a_fast_plugin_grows_to_the_largest_pull_and_a_slow_one_keeps_its_floor() {
        let size = size_after_half_a_second(150_000, 128, 64);
        assert_eq!(size, MOST_PER_PULL);

        let size = size_after_half_a_second(40_000, 128, 64);
        // 5 ms of 40,000/s.
        assert!((190..=210).contains(&size), "{size}");

        let size = size_after_half_a_second(2_000, 128, 64);
        assert_eq!(size, 64);
    }

    #[test]
    fn large_messages_bound_the_pull_by_bytes_but_never_below_the_floor() {
        let size = size_after_half_a_second(100_000, 64 << 10, 64);
        assert_eq!(size, BYTES_PER_PULL / (64 << 10));

        let size = size_after_half_a_second(100_000, 1 << 20, 64);
        assert_eq!(size, 64);
    }

    #[test]
    fn a_plugin_with_more_slots_than_the_largest_pull_asks_for_its_floor() {
        let size = size_after_half_a_second(500_000, 128, 2_000);
        assert_eq!(size, 2_000);
    }

    #[test]
    fn when_traffic_stops_the_pull_shrinks_back_to_the_floor() {
        let start = Instant::now();
        let mut depth = PullDepth::new(start);
        let (mut now, size) = settle(
            &mut depth,
            start,
            150_000,
            128,
            Duration::from_millis(500),
            64,
        );
        assert_eq!(size, MOST_PER_PULL);
        // Idle pulls expire after a second, bringing nothing.
        for _ in 0..8 {
            now += Duration::from_secs(1);
            depth.pulled(0, 0, now);
        }
        assert_eq!(depth.size(64, now), 64);
    }

    #[tokio::test]
    async fn a_pull_fits_while_held_and_asked_stay_within_the_limit_and_a_freed_message_wakes_the_loop()
     {
        let holding = Arc::new(Holding::default());
        assert!(holding.room_for(8, 16));
        holding.asking(8);
        assert!(holding.room_for(8, 16));
        holding.asking(8);
        assert!(!holding.room_for(1, 16));
        // The first pull brings its 8, which wait for slots: still full.
        let held: Vec<HeldMessage> = (0..8)
            .map(|_| {
                holding.brought_one();
                holding.hold()
            })
            .collect();
        holding.pull_ended(8, 8);
        assert!(!holding.room_for(1, 16));
        // The second ends early with 2: room for 6.
        for _ in 0..2 {
            holding.brought_one();
        }
        let more: Vec<HeldMessage> = (0..2).map(|_| holding.hold()).collect();
        holding.pull_ended(8, 2);
        assert!(holding.room_for(6, 16));
        assert!(!holding.room_for(7, 16));
        assert_eq!(holding.held(), 10);
        drop(more);
        drop(held);
        assert_eq!(holding.held(), 0);
        assert!(holding.room_for(16, 16));
        tokio::time::timeout(Duration::from_secs(5), holding.freed())
            .await
            .expect("a let-go message wakes the pull loop");
    }

    #[test]
    fn max_ack_pending_holds_two_of_the_largest_pulls_or_four_times_the_slots() {
        assert_eq!(max_ack_pending_for(32), 2 * MOST_PER_PULL as i64);
        assert_eq!(max_ack_pending_for(1_000), 4_000);
    }
}
