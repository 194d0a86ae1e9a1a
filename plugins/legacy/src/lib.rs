//! `legacy`: a plugin built against contract `sluice:plugin@0.1.0` (the WIT
//! in `wit/`) with plain wit-bindgen, as plugins were built before 0.2.0.
//! The SDK now speaks 0.2.0; this copy proves that a 0.1.0 component keeps
//! working unchanged: it logs, publishes `legacy: <payload>` to
//! `legacy.out` (or answers the request's reply subject), and rejects the
//! payload `bad` as permanent.
wit_bindgen::generate!({ path: "../../wit", world: "consumer" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::types::{Event, Field, HandlerError, Header, Level};
use sluice::plugin::{logging, publisher};

struct Legacy;

impl Guest for Legacy {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let text = String::from_utf8_lossy(&event.payload).into_owned();
        logging::log(
            Level::Info,
            &format!("legacy: {text}"),
            &[Field {
                key: "contract".into(),
                value: "0.1.0".into(),
            }],
        );
        if text == "bad" {
            return Err(HandlerError::Permanent("legacy refuses `bad`".into()));
        }
        let answer = format!("legacy: {text}");
        let to = event
            .delivery
            .reply_to
            .unwrap_or_else(|| "legacy.out".into());
        let headers = [Header {
            name: "Legacy-Key".into(),
            value: event.idempotency_key,
        }];
        publisher::publish(&to, answer.as_bytes(), &headers)
            .map_err(|e| HandlerError::Permanent(format!("publish refused: {e:?}")))
    }
}

export!(Legacy);
