//! Per-instance memory and table limits that remember when they refused, so a
//! trap after a refused `memory.grow` is reported as "out of memory" rather
//! than a generic trap.

use wasmtime::ResourceLimiter;

/// Caps linear memory and table growth of one instance.
#[derive(Debug, Clone)]
pub struct MemoryLimiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    refused_memory: bool,
}

impl MemoryLimiter {
    /// A limiter allowing at most these sizes.
    pub fn new(max_memory_bytes: usize, max_table_elements: usize) -> Self {
        MemoryLimiter {
            max_memory_bytes,
            max_table_elements,
            refused_memory: false,
        }
    }

    /// Whether a memory growth was refused during this invocation.
    pub fn refused_memory(&self) -> bool {
        self.refused_memory
    }

    /// The memory cap in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory_bytes;
        if !allowed {
            self.refused_memory = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}
