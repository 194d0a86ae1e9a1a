//! Delivery policy owned by the host: idempotency keys, dedup records, retry
//! timing, dead-lettering, and the deterministic message ids that make a
//! plugin's publishes deduplicable downstream.

pub mod breaker;
pub mod dead_letter;
pub mod dedup;
pub mod dedup_kv;
pub mod key;
pub mod retry;
pub mod settle;

pub use key::outgoing_msg_id;
pub use retry::{Jitter, RetryPolicy};
