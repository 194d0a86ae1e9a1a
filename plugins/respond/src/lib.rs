//! `respond`: answers each request on its own reply subject with
//! `re: <payload>`: the request/reply example. The reply needs no publish
//! grant; the host lets a plugin reach the reply subject of the event it is
//! handling, and no other inbox.
use sluice_sdk::{Event, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let answer = format!("re: {}", event.text()?);
    sluice_sdk::reply(&event, answer)
}

sluice_sdk::export_handler!(handle);
