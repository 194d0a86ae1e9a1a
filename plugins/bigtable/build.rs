//! Generates the lookup table (`TABLE_WORDS` little-endian u32 words,
//! deterministic xorshift output) that the plugin indexes on every event.
//! It is real data the handler reads, not padding, so the component is a
//! genuinely large module (its data segment) for the reload benchmarks.

use std::io::Write;

/// 655,360 words = 2.5 MiB.
const TABLE_WORDS: usize = 655_360;

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("table.bin");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(TABLE_WORDS * 4);
    for _ in 0..TABLE_WORDS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&(state as u32).to_le_bytes());
    }
    std::fs::File::create(out)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("writing the generated table");
    println!("cargo:rerun-if-changed=build.rs");
}
