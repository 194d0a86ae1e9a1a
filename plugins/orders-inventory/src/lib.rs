//! `orders-inventory` v1: the order saga's inventory step (see
//! `inventory.rs`). It matches SKUs exactly as written, which is the bug
//! the demo fixes live: an order for `mug-1` (validation accepts SKUs in any
//! case) is dead-lettered as an unknown SKU until `orders-inventory-v2` is
//! copied into the plugin folder and the dead letter is replayed.
mod inventory;

fn handle(event: sluice_sdk::Event) -> sluice_sdk::HandlerResult {
    inventory::handle(event, inventory::Skus::Exact)
}

sluice_sdk::export_handler!(handle);
