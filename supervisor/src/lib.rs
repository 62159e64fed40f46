//! Supervisor: listeners, worker processes, signals, reload and shared memory.
