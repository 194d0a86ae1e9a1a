//! `sluice:plugin@0.1.0` (WIT in `wit/`): handler, logging, publisher.
//!
//! The only module that sees this version's generated bindings: it converts
//! them to and from the host's types ([`super`]) and serves the imports
//! through [`PluginHost`].

use wasmtime::AsContextMut;
use wasmtime::component::Linker;

use super::{Event, HandlerError, Level, PluginHost, PublishError, Served, ServedBy};

mod bindings {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "consumer",
        exports: { default: async },
    });
}

use bindings::sluice::plugin::{logging, publisher, types};
pub use bindings::{Consumer, ConsumerPre};

/// The contract version this module serves.
pub const VERSION: &str = "0.1.0";

/// Add this version's imports to `linker`.
pub fn add_to_linker<T: PluginHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    Consumer::add_to_linker::<T, ServedBy<T>>(linker, |state| Served(state))
}

super::surface_of_0_1!();
