//! Host bindings generated from wit/ for every contract version the host
//! accepts. Today that is `sluice:plugin@0.1.0`; a later version gets its own
//! module here and the host keeps linking both.

/// Bindings for `sluice:plugin@0.1.0`, world `consumer`.
pub mod v0_1 {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "consumer",
        exports: { default: async },
    });
}

/// The contract versions this host accepts, newest first.
pub const CONTRACT_VERSIONS: &[&str] = &["0.1.0"];

/// The export a sluice plugin must provide, for a contract version.
pub fn handler_export(version: &str) -> String {
    format!("sluice:plugin/handler@{version}")
}
