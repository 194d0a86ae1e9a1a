//! The order saga example (`examples/orders`, `make demo`): what runs
//! *around* the plugins. The plugins themselves live in `plugins/orders-*`
//! (Python validation, Rust inventory and payment, JavaScript shipping).
//!
//! - [`payments`]: the fake payment service (a Python script) as a child
//!   process, its admin switches and counters;
//! - [`saga`]: the `ORDERS` stream, placing orders, and an observer that
//!   follows each order to its outcome;
//! - [`http`]: a tiny loopback HTTP client;
//! - [`admin`]: the host's admin endpoint (plugin status, counters).
//!
//! The demo driver (`orders-demo`) and the end-to-end test
//! (`tests/tests/orders.rs`) are both built from these pieces.

pub mod admin;
pub mod http;
pub mod payments;
pub mod saga;
