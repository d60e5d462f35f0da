//! The interactive debugger (`xenprobe repl`): rustyline with history and
//! completion of commands, registers and symbols. Commands: see
//! [`commands::COMMANDS`] (`help`). Errors print one line and the loop goes
//! on; a panic inside a command is caught and reported the same way.
//!
//! When stdin is not a terminal, commands are read line by line with no
//! prompt and each is echoed as `> CMD` (scripted sessions).

pub mod commands;
pub mod complete;
pub mod expr;
pub mod session;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::Editor;

use commands::{execute, Flow, INTERRUPT};
use complete::ReplHelper;
use session::Session;

/// A command failed (printed as one line).
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The engine refused or failed.
    #[error(transparent)]
    Vmi(#[from] crate::vmi::Error),
    /// Wrong use of a command.
    #[error("{0}")]
    Usage(String),
    /// An expression did not evaluate.
    #[error("expression: {0}")]
    Expr(String),
    /// The hypervisor or engine does not offer this.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Terminal or I/O failure of the REPL itself.
    #[error("terminal: {0}")]
    Io(String),
}

/// Runs one line and prints its output or its error; never panics.
pub fn run_line(s: &mut Session, line: &str) -> Flow {
    let mut out = String::new();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(s, line, &mut out)));
    print!("{out}");
    match result {
        Ok(Ok(flow)) => flow,
        Ok(Err(e)) => {
            println!("error: {}", one_line(&e.to_string()));
            Flow::Continue
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            println!("error: internal error: {}", one_line(&msg));
            Flow::Continue
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the REPL, optionally attaching to `domain` first; an interactive
/// prompt keeps its history in `history`.
pub fn run(
    domain: Option<&str>,
    symbols: Option<&Path>,
    modules: &[PathBuf],
    history: Option<&Path>,
    settings: crate::vmi::Settings,
) -> Result<(), ReplError> {
    let mut s = Session::new(symbols.map(Path::to_path_buf), modules.to_vec());
    s.settings = settings;
    // Ctrl-C while the guest runs stops it; at the prompt rustyline handles it.
    ctrlc::set_handler(|| INTERRUPT.store(true, Ordering::SeqCst))
        .map_err(|e| ReplError::Io(format!("Ctrl-C handler: {e}")))?;
    if let Some(d) = domain {
        run_line(&mut s, &format!("attach {d}"));
    }
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| ReplError::Io(e.to_string()))?;
            println!("> {}", line.trim());
            if run_line(&mut s, &line) == Flow::Quit {
                return Ok(());
            }
        }
        run_line(&mut s, "quit");
        return Ok(());
    }
    let helper = ReplHelper::default();
    let mut rl: Editor<ReplHelper, DefaultHistory> =
        Editor::new().map_err(|e| ReplError::Io(e.to_string()))?;
    rl.set_helper(Some(helper.clone()));
    if let Some(h) = history {
        let _ = rl.load_history(h);
    }
    loop {
        if let Ok(mut names) = helper.symbols.lock() {
            if names.len() != s.symbol_names.len() {
                *names = s.symbol_names.clone();
            }
        }
        let prompt = match &s.dom {
            Some(d) => format!("(xenprobe {}) ", d.name()),
            None => "(xenprobe) ".to_string(),
        };
        match rl.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                if run_line(&mut s, &line) == Flow::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                run_line(&mut s, "quit");
                break;
            }
            Err(e) => {
                println!("error: {e}");
                break;
            }
        }
    }
    if let Some(h) = history {
        let _ = rl.save_history(h);
    }
    Ok(())
}
