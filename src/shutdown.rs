//! Shutdown: one flag that signal handlers, tests and drivers share. The
//! first SIGINT/SIGTERM asks the daemon to drain and stop; a second one
//! exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cloneable "please stop" flag.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Installs SIGINT and SIGTERM handlers: the first sets the flag, the
    /// second terminates the process with exit code 130.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(signal, 130, self.flag.clone())?;
            signal_hook::flag::register(signal, self.flag.clone())?;
        }
        Ok(())
    }
}
