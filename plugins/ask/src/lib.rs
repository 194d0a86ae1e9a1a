//! `ask`: the request example. An event on `ask.<subject>` makes the plugin
//! send its payload as a request to `<subject>` and publish the answer to
//! `asked.<subject>`. A refused request (not granted) is published as
//! `refused: <why>` instead, so the refusal can be seen; no answer in time
//! fails the event as retryable.
use sluice_sdk::{Event, HandlerError, HandlerResult, RequestError};

fn handle(event: Event) -> HandlerResult {
    let target = event
        .subject
        .strip_prefix("ask.")
        .ok_or_else(|| HandlerError::permanent("expected ask.<subject>"))?;
    let out = format!("asked.{target}");
    match sluice_sdk::request(target, &event.payload) {
        Ok(answer) => sluice_sdk::publish(&out, answer.payload)?,
        Err(RequestError::NotGranted(why)) => sluice_sdk::publish(&out, format!("refused: {why}"))?,
        Err(other) => return Err(other.into()),
    }
    Ok(())
}

sluice_sdk::export_handler!(handle);
