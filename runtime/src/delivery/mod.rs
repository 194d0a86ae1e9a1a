//! Delivery policy owned by the host: idempotency keys, retry timing, and the
//! deterministic message ids that make a plugin's publishes deduplicable.

pub mod key;
pub mod retry;

pub use key::{idempotency_key, outgoing_msg_id};
pub use retry::RetryPolicy;
