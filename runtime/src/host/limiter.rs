//! Per-instance memory, table and instance-count limits that remember when
//! they refused, so a trap after a refused `memory.grow` is reported as "out
//! of memory" (and one after a refused `table.grow` as a resource limit)
//! rather than a generic trap.
//!
//! These are per plugin; the pooling allocator's slots are sized for the
//! largest limit any plugin may have, so the limiter is what holds a plugin
//! to its own, possibly lower, limits.

use wasmtime::ResourceLimiter;

/// Caps linear memory and table growth of one instance.
#[derive(Debug, Clone)]
pub struct MemoryLimiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    max_core_instances: usize,
    refused_memory: bool,
    refused_table: bool,
    grown: usize,
}

impl MemoryLimiter {
    /// A limiter allowing at most these sizes and core instances.
    pub fn new(
        max_memory_bytes: usize,
        max_table_elements: usize,
        max_core_instances: usize,
    ) -> Self {
        MemoryLimiter {
            max_memory_bytes,
            max_table_elements,
            max_core_instances,
            refused_memory: false,
            refused_table: false,
            grown: 0,
        }
    }

    /// Bytes the instance's memories grew by during this invocation (not
    /// counting their initial size).
    pub fn grown(&self) -> usize {
        self.grown
    }

    /// Forget the previous event's refusals (a reused instance; the memory
    /// it grew stays, and stays counted against the cap).
    pub fn reset(&mut self) {
        self.refused_memory = false;
        self.refused_table = false;
        self.grown = 0;
    }

    /// Whether a memory growth was refused during this invocation.
    pub fn refused_memory(&self) -> bool {
        self.refused_memory
    }

    /// Whether a table growth was refused during this invocation.
    pub fn refused_table(&self) -> bool {
        self.refused_table
    }

    /// The table cap in elements.
    pub fn max_table_elements(&self) -> usize {
        self.max_table_elements
    }

    /// The memory cap in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory_bytes;
        if !allowed {
            self.refused_memory = true;
        } else if current > 0 {
            self.grown += desired - current;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_table_elements;
        if !allowed {
            self.refused_table = true;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.max_core_instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_remembered() {
        let mut limiter = MemoryLimiter::new(1 << 20, 10, 4);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.refused_memory());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(limiter.refused_memory());
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(!limiter.table_growing(10, 11, None).unwrap());
        assert!(limiter.refused_table());
        assert_eq!(limiter.instances(), 4);
        assert_eq!(limiter.grown(), 0, "the initial size is not growth");
        let mut limiter = MemoryLimiter::new(8 << 20, 10, 4);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.memory_growing(1 << 20, 3 << 20, None).unwrap());
        assert_eq!(limiter.grown(), 2 << 20);
        limiter.reset();
        assert_eq!(limiter.grown(), 0);
    }
}
