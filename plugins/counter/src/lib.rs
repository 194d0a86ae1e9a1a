//! `counter`: counts the events its instance has handled in a global, and
//! publishes the count to `counted.<subject>`. With a fresh instance per event
//! the count is always 1; with `isolation = "reuse"` it climbs until the
//! instance is replaced. A subject ending in `.trap` panics after counting,
//! and one ending in `.fail` returns a permanent error (the instance survives
//! that: the handler returned normally). Tests use it to see instance reuse.
use std::sync::atomic::{AtomicU32, Ordering};

use sluice_sdk::{Event, HandlerError, HandlerResult};

static HANDLED: AtomicU32 = AtomicU32::new(0);

fn handle(event: Event) -> HandlerResult {
    let count = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
    if event.subject.ends_with(".trap") {
        panic!("counter traps on purpose after {count} events");
    }
    if event.subject.ends_with(".fail") {
        return Err(HandlerError::permanent(format!(
            "failing on purpose after {count} events"
        )));
    }
    sluice_sdk::publish(
        &format!("counted.{}", event.subject),
        count.to_string().as_bytes(),
    )?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
