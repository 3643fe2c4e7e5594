//! Ctrl-C, SIGTERM and SIGHUP stop a run with a checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C, SIGTERM or SIGHUP; the training loop checkpoints and stops
/// after the current step. A second signal exits at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&flag);
    let installed = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step to write a checkpoint (Ctrl-C again to quit at once)"
        );
    });
    if let Err(error) = installed {
        eprintln!("warning: Ctrl-C and SIGTERM will not write a checkpoint ({error})");
    }
    flag
}
