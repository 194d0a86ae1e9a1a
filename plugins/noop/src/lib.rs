//! `noop`: succeeds without doing anything. The floor for benchmarks and a
//! neutral neighbour in isolation tests.
use sluice_sdk::{Event, HandlerResult};

fn handle(_event: Event) -> HandlerResult {
    Ok(())
}

sluice_sdk::export_handler!(handle);
