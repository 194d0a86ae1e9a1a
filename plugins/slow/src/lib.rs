//! `slow`: sleeps for the `x-sleep-ms` header's milliseconds (default 0),
//! then publishes the payload to `<subject>.done`. Tests use it to have
//! events in flight at a known moment (graceful shutdown, in-flight gauge).
use sluice_sdk::{Event, HandlerResult};
use std::time::Duration;

fn handle(event: Event) -> HandlerResult {
    let ms: u64 = event
        .header("x-sleep-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    sluice_sdk::publish(&format!("{}.done", event.subject), &event.payload)?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
