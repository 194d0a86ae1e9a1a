//! `orders-inventory` v2: the same step with the SKU fix (case-insensitive
//! SKUs, as validation treats them). Deployed by copying its `.wasm` over
//! `orders-inventory.wasm` in the plugin folder; the host hot-reloads it.
#[path = "../../orders-inventory/src/inventory.rs"]
mod inventory;

fn handle(event: sluice_sdk::Event) -> sluice_sdk::HandlerResult {
    inventory::handle(event, inventory::Skus::CaseInsensitive)
}

sluice_sdk::export_handler!(handle);
