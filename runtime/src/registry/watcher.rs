//! Watching the plugin folder for deploys.
//!
//! On Linux (inotify) the host reacts to a file being closed after writing
//! and to a file renamed into place, never to individual writes: a copy that
//! arrives in pieces is only looked at once its writer closes it, and an
//! editor's save dance (write a temp file, rename it over the original) ends
//! in one rename. Deletions and renames away are reported too. The
//! supervisor then debounces per plugin and checks the file is stable before
//! loading it, and a load that fails is retried when a later write completes
//! the file.

use std::path::Path;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::mpsc;

use super::loader::plugin_name;

/// The folder cannot be watched.
#[derive(Debug, Error)]
#[error("cannot watch plugin folder {path}: {message}; hot deploy is off until the host restarts")]
pub struct WatchError {
    /// The folder.
    pub path: String,
    /// Why.
    pub message: String,
}

/// A live watch; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: RecommendedWatcher,
}

/// Whether an event means "look at this file again".
fn is_relevant(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// Watch `dir`; names of plugins whose files were completed, renamed or
/// removed arrive on the returned channel.
pub fn watch(dir: &Path) -> Result<(FolderWatcher, mpsc::UnboundedReceiver<String>), WatchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let err = |e: notify::Error| WatchError {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) if is_relevant(&event.kind) => {
                for path in &event.paths {
                    if let Some(name) = plugin_name(path) {
                        let _ = tx.send(name);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("plugin folder watch error: {e}"),
        })
        .map_err(err)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(err)?;
    Ok((FolderWatcher { _watcher: watcher }, rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    #[test]
    fn only_completed_writes_renames_and_removals_count() {
        assert!(is_relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_relevant(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_relevant(&EventKind::Remove(RemoveKind::File)));
        assert!(!is_relevant(&EventKind::Create(CreateKind::File)));
        assert!(!is_relevant(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
    }
}
