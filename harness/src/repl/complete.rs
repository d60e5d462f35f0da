//! Tab completion: command names, then registers (`$rax`) and symbols.

use std::sync::{Arc, Mutex};

use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use crate::arch::REGS;

use super::commands::COMMANDS;

/// The rustyline helper; `symbols` is refreshed by the loop after each command.
#[derive(Debug, Default, Clone)]
pub struct ReplHelper {
    /// Symbol names of the loaded image.
    pub symbols: Arc<Mutex<Vec<String>>>,
}

/// Candidates for the word ending at `pos` in `line`: (start, candidates).
pub fn candidates(line: &str, pos: usize, symbols: &[String]) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    let head = &line[..pos];
    let start = head
        .rfind(|c: char| c.is_whitespace() || "()*&+-,=/".contains(c))
        .map_or(0, |i| i + 1);
    let word = &head[start..];
    let first_word = !head[..start].chars().any(|c| !c.is_whitespace());
    let mut out: Vec<String> = if first_word {
        COMMANDS
            .iter()
            .map(|(c, _)| c.to_string())
            .filter(|c| c.starts_with(word))
            .collect()
    } else if let Some(r) = word.strip_prefix('$') {
        REGS.iter()
            .filter(|d| d.kind.is_real() && d.name.starts_with(r))
            .map(|d| format!("${}", d.name))
            .collect()
    } else {
        let regs = REGS
            .iter()
            .filter(|d| d.kind.is_real() && d.name.starts_with(word))
            .map(|d| d.name.to_string());
        let syms = symbols.iter().filter(|s| s.starts_with(word)).cloned();
        regs.chain(syms).collect()
    };
    out.sort();
    out.dedup();
    out.truncate(200);
    (start, out)
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let syms = self.symbols.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(candidates(line, pos, &syms))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_commands_registers_and_symbols() {
        let syms = vec!["known_tick".to_string(), "known_step".to_string()];
        assert_eq!(candidates("dis", 3, &syms), (0, vec!["disas".to_string()]));
        let (start, c) = candidates("print $r", 8, &syms);
        assert_eq!(start, 6);
        assert!(c.contains(&"$rax".to_string()) && c.contains(&"$rip".to_string()));
        assert!(!c.iter().any(|x| x.starts_with("$st")));
        let (start, c) = candidates("break known_t", 13, &syms);
        assert_eq!((start, c), (6, vec!["known_tick".to_string()]));
        let (_, c) = candidates("x/4xg *(u64*)&kno", 17, &syms);
        assert_eq!(c.len(), 2);
        assert_eq!(candidates("zz", 2, &syms).1, Vec::<String>::new());
    }
}
