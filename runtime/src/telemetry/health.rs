//! Conditions that make the host not ready, raised and cleared by whoever
//! notices them (the dedup store opening in the background, the DLQ stream
//! setup, a JetStream consumer that vanished), and read by `/readyz`.
//!
//! One small shared map instead of a flag per subsystem: `/readyz` lists every
//! live condition with its reason, so an operator sees at once what is wrong.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Named not-ready conditions, shared by the whole host.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Each condition's reason, and who raised it (0: anyone).
    conditions: Arc<Mutex<BTreeMap<String, (String, u64)>>>,
}

impl Health {
    /// Raise (or update) condition `name` with `reason`.
    pub fn set(&self, name: &str, reason: &str) {
        self.set_by(name, reason, 0);
    }

    /// Clear condition `name`.
    pub fn clear(&self, name: &str) {
        self.conditions.lock().expect("health lock").remove(name);
    }

    /// Raise (or update) condition `name` as `owner`: for a condition that
    /// two of its kind can hold in turn (a reload's old and new JetStream
    /// loop of one plugin), so the one leaving does not clear the other's.
    pub fn set_by(&self, name: &str, reason: &str, owner: u64) {
        self.conditions
            .lock()
            .expect("health lock")
            .insert(name.to_string(), (reason.to_string(), owner));
    }

    /// Clear condition `name` if `owner` raised it last.
    pub fn clear_by(&self, name: &str, owner: u64) {
        let mut conditions = self.conditions.lock().expect("health lock");
        if conditions.get(name).is_some_and(|(_, by)| *by == owner) {
            conditions.remove(name);
        }
    }

    /// Every live condition as "name: reason".
    pub fn problems(&self) -> Vec<String> {
        self.conditions
            .lock()
            .expect("health lock")
            .iter()
            .map(|(name, (reason, _))| format!("{name}: {reason}"))
            .collect()
    }
}

/// Run `attempt` until it succeeds or `stop`, with backoff from 200 ms to
/// 10 s, raising `condition` (with the error and `consequence`, also logged)
/// while it fails and clearing it once it succeeds. For what the host needs
/// but can serve without for a while (the dedup bucket, the DLQ stream).
pub fn keep_trying<F, Fut, E>(
    health: Health,
    condition: String,
    consequence: &'static str,
    stop: tokio_util::sync::CancellationToken,
    mut attempt: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    health.set(&condition, "setting up");
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            match attempt().await {
                Ok(()) => {
                    health.clear(&condition);
                    return;
                }
                Err(e) => {
                    tracing::error!("{e}; {consequence} (retrying in {backoff:?})");
                    health.set(&condition, &e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_listed_until_cleared() {
        let h = Health::default();
        assert!(h.problems().is_empty());
        h.set("dlq", "stream missing");
        h.set("dlq", "cannot create");
        h.clone().set("kv", "down");
        assert_eq!(h.problems(), vec!["dlq: cannot create", "kv: down"]);
        h.clear("dlq");
        assert_eq!(h.problems(), vec!["kv: down"]);
    }

    #[test]
    fn an_owner_clears_only_what_it_raised_last() {
        let h = Health::default();
        h.set_by("consumer", "old loop", 1);
        h.set_by("consumer", "new loop", 2);
        h.clear_by("consumer", 1);
        assert_eq!(h.problems(), vec!["consumer: new loop"]);
        h.clear_by("consumer", 2);
        assert!(h.problems().is_empty());
    }
}
