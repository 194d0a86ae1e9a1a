//! `bigtable`: a deliberately large plugin (≈2.6 MB component) for the
//! hot-reload and cold-start benchmarks. It parses the event as JSON, scores
//! it by walking a 2.5 MiB generated lookup table (build.rs) from a hash of
//! the payload, adds the score, and publishes one derived event to
//! `<prefix>.scored.<rest>`, like `enrich` does.
use serde_json::{Value, json};
use sluice_sdk::{Event, HandlerError, HandlerResult};

/// The generated table, as bytes (little-endian u32 words).
static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/table.bin"));

fn word(i: usize) -> u32 {
    let i = (i % (TABLE.len() / 4)) * 4;
    u32::from_le_bytes([TABLE[i], TABLE[i + 1], TABLE[i + 2], TABLE[i + 3]])
}

/// Eight dependent lookups seeded by an FNV-1a hash of the payload.
fn score(payload: &[u8]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in payload {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    (0..8).fold(h, |acc, _| word(acc as usize) ^ acc.rotate_left(5))
}

fn handle(event: Event) -> HandlerResult {
    let mut doc: Value = event.json()?;
    let Some(fields) = doc.as_object_mut() else {
        return Err(HandlerError::permanent("expected a JSON object"));
    };
    fields.insert("score".into(), json!(score(&event.payload)));
    let derived = match event.subject.split_once('.') {
        Some((prefix, rest)) => format!("{prefix}.scored.{rest}"),
        None => format!("{}.scored", event.subject),
    };
    sluice_sdk::publish_json(&derived, &doc)?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
