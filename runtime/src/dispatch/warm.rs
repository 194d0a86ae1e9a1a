//! Warm instances for plugins with `isolation = "reuse"`: after a call that
//! returned normally, the instance goes back to its version's [`WarmPool`]
//! instead of being dropped, and the plugin's next event runs on it without
//! instantiating.
//!
//! An idle instance still occupies a slot of the engine's instance pool, so
//! it keeps the host-wide instance permit it ran with. When an event needs a
//! fresh instance and every permit is held, idle instances of any plugin are
//! evicted first ([`WarmPools::evict_one`]), so warm instances never make an
//! event wait longer than a fresh-instance host would. A pool belongs to one
//! [`Route`](super::Route) (one plugin version): instances never cross
//! versions, and a retired version's pool is dropped with its route.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedSemaphorePermit;

use crate::engine::invoke::WarmInstance;

/// Idle instances of one plugin version, with their instance permits.
#[derive(Debug)]
pub struct WarmPool {
    idle: Mutex<Vec<(WarmInstance, OwnedSemaphorePermit)>>,
    reuse_limit: u32,
    max_idle: usize,
    registered: std::sync::atomic::AtomicBool,
}

impl WarmPool {
    /// A pool keeping at most `max_idle` instances, each used for at most
    /// `reuse_limit` events.
    pub fn new(reuse_limit: u32, max_idle: usize) -> Self {
        WarmPool {
            idle: Mutex::default(),
            reuse_limit,
            max_idle,
            registered: Default::default(),
        }
    }

    /// An idle instance and its permit, if there is one.
    pub fn take(&self) -> Option<(WarmInstance, OwnedSemaphorePermit)> {
        self.idle.lock().expect("warm pool lock").pop()
    }

    /// Keep `warm` for a later event, unless it reached its reuse limit or
    /// the pool is full (then it is dropped, with its permit).
    pub fn put(&self, warm: WarmInstance, permit: OwnedSemaphorePermit) {
        if warm.uses >= self.reuse_limit {
            return;
        }
        let mut idle = self.idle.lock().expect("warm pool lock");
        if idle.len() < self.max_idle {
            idle.push((warm, permit));
        }
    }

    fn evict(&self) -> Option<(WarmInstance, OwnedSemaphorePermit)> {
        let mut idle = self.idle.lock().expect("warm pool lock");
        // The least recently used one.
        (!idle.is_empty()).then(|| idle.remove(0))
    }
}

/// Every warm pool of the host, for eviction when instance permits run out.
#[derive(Debug, Default)]
pub struct WarmPools {
    pools: Mutex<Vec<Weak<WarmPool>>>,
    idle_added: tokio::sync::Notify,
}

impl WarmPools {
    /// Make `pool` a candidate for eviction (once; cheap afterwards).
    pub fn register(&self, pool: &Arc<WarmPool>) {
        if !pool
            .registered
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let mut pools = self.pools.lock().expect("warm pools lock");
            pools.retain(|p| p.strong_count() > 0);
            pools.push(Arc::downgrade(pool));
        }
    }

    /// An instance was put back idle (with its permit): wake events waiting
    /// for a permit, so they can evict it.
    pub fn idle_added(&self) {
        self.idle_added.notify_waiters();
    }

    /// Resolves at the next [`idle_added`](Self::idle_added) after it is
    /// enabled or first polled.
    pub fn wait_for_idle(&self) -> tokio::sync::futures::Notified<'_> {
        self.idle_added.notified()
    }

    /// Drop one idle instance of any plugin, freeing its permit; `false`
    /// when none is idle.
    pub fn evict_one(&self) -> bool {
        let pools: Vec<Arc<WarmPool>> = self
            .pools
            .lock()
            .expect("warm pools lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        // Dropped outside every lock: dropping an instance returns its slot.
        pools.iter().find_map(|p| p.evict()).is_some()
    }
}
