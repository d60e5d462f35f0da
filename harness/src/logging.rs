//! Logging for xenprobe's programs: `tracing` on stderr, filtered by
//! `XENPROBE_LOG` (e.g. `xenprobe=debug`; default `warn`), with colours only
//! when stderr is a terminal (a stub's or campaign's log file stays plain).

use std::io::IsTerminal;

/// Installs the subscriber (once; later calls do nothing).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENPROBE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
