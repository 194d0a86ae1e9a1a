//! `sluice:plugin@0.2.0` (WIT in `wit/0.2.0/`): 0.1.0 plus `config`, `state`,
//! `requester` and `wasi:http/outgoing-handler`.
//!
//! The only module that sees this version's generated bindings: it converts
//! them to and from the host's types ([`super`]) and serves the sluice
//! imports through [`PluginHost`]. The WASI imports of the world (`wasi:http`
//! and what it uses) are the standard ones, linked with WASI by
//! [`crate::host::linker`], so they are mapped to wasmtime's bindings here and
//! only the sluice interfaces are added below.

use wasmtime::AsContextMut;
use wasmtime::component::Linker;

use super::{Event, HandlerError, Level, PluginHost, PublishError, Served, ServedBy};
use crate::host::state::WriteOp;

mod bindings {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "consumer",
        exports: { default: async },
        imports: { "sluice:plugin/state": async, "sluice:plugin/requester": async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

use bindings::sluice::plugin::{config, logging, publisher, requester, state, types};
pub use bindings::{Consumer, ConsumerPre};

/// The contract version this module serves.
pub const VERSION: &str = "0.2.0";

/// Add this version's sluice imports to `linker` (its WASI imports are
/// added with WASI).
pub fn add_to_linker<T: PluginHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn serve<T>(state: &mut T) -> Served<'_, T> {
        Served(state)
    }
    types::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)?;
    logging::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)?;
    publisher::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)?;
    config::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)?;
    state::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)?;
    requester::add_to_linker::<T, ServedBy<T>>(linker, serve::<T>)
}

super::surface_of_0_1!();

impl<T: PluginHost> config::Host for Served<'_, T> {
    fn get(&mut self, key: String) -> Option<String> {
        PluginHost::config_get(self.0, &key)
    }
}

fn state_error(e: super::StateError) -> state::StateError {
    use super::StateError as E;
    match e {
        E::NotGranted(m) => state::StateError::NotGranted(m),
        E::InvalidKey(m) => state::StateError::InvalidKey(m),
        E::LimitExceeded(m) => state::StateError::LimitExceeded(m),
        E::Unavailable(m) => state::StateError::Unavailable(m),
    }
}

fn set_op(value: Vec<u8>, ttl_ms: Option<u64>) -> WriteOp {
    let ttl = ttl_ms.map(std::time::Duration::from_millis);
    WriteOp::Set { value, ttl }
}

impl<T: PluginHost> state::Host for Served<'_, T> {
    async fn get(&mut self, key: String) -> Result<Option<state::Entry>, state::StateError> {
        let entry = self.0.state().get(&key).await.map_err(state_error)?;
        Ok(entry.map(|e| state::Entry {
            value: e.value,
            revision: e.revision,
        }))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), state::StateError> {
        let op = set_op(value, ttl_ms);
        self.0.state().write(&key, op, None).map_err(state_error)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        revision: u64,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), state::StateError> {
        let op = set_op(value, ttl_ms);
        let txn = self.0.state();
        txn.write(&key, op, Some(revision)).map_err(state_error)
    }

    async fn delete(&mut self, key: String) -> Result<(), state::StateError> {
        let txn = self.0.state();
        txn.write(&key, WriteOp::Delete, None).map_err(state_error)
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, state::StateError> {
        self.0.state().list(&prefix).await.map_err(state_error)
    }
}

impl<T: PluginHost> requester::Host for Served<'_, T> {
    async fn request(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<types::Header>,
        timeout_ms: Option<u64>,
    ) -> Result<requester::Response, requester::RequestError> {
        use super::RequestError as E;
        let headers = headers
            .into_iter()
            .map(|h| super::Header {
                name: h.name,
                value: h.value,
            })
            .collect();
        let timeout = timeout_ms.map(std::time::Duration::from_millis);
        let budget = self.0.requests();
        match budget.request(subject, payload, headers, timeout).await {
            Ok(answer) => Ok(requester::Response {
                payload: answer.payload,
                headers: answer
                    .headers
                    .into_iter()
                    .map(|h| types::Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
            }),
            Err(e) => Err(match e {
                E::NotGranted(m) => requester::RequestError::NotGranted(m),
                E::InvalidSubject(m) => requester::RequestError::InvalidSubject(m),
                E::NoResponders(m) => requester::RequestError::NoResponders(m),
                E::TimedOut(m) => requester::RequestError::TimedOut(m),
                E::LimitExceeded(m) => requester::RequestError::LimitExceeded(m),
                E::Unavailable(m) => requester::RequestError::Unavailable(m),
            }),
        }
    }
}
