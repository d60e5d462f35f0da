//! Engine settings. The programs choose them (command-line options, with
//! their environment fallbacks in the binaries) and hand them to [`Xen`];
//! the engine never reads the environment.
//!
//! [`Xen`]: super::Xen

use std::path::PathBuf;

use super::caps::BreakpointInsnKind;

/// How the engine debugs, where a choice exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Forces the breakpoint instruction; `None`: the capability rules
    /// choose (int3, or ICEBP for HVM/PVH on an emulated CPU).
    pub breakpoint: Option<BreakpointInsnKind>,
    /// Steps over breakpoints by loading the whole vCPU context instead of
    /// through the vm_event reply's registers (slower; for diagnosis).
    pub slow_step: bool,
    /// Where xenprobe keeps state about domains in dom0 (attach journals,
    /// records of guests left paused for a later session); `None`:
    /// [`DEFAULT_STATE_DIR`].
    pub state_dir: Option<PathBuf>,
}

/// The state directory unless one is given: gone when dom0 reboots, as the
/// domains are.
pub const DEFAULT_STATE_DIR: &str = "/run/xenprobe";

impl Settings {
    /// The state directory in use.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

/// The command-line options that make [`Settings`] (flattened into the
/// binaries' own; each has its environment variable as a fallback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Force the breakpoint instruction: int3 or icebp (default: int3, or
    /// ICEBP for HVM/PVH guests on an emulated CPU).
    #[arg(long, global = true, env = "XENPROBE_BREAKPOINT", value_name = "INSN")]
    pub breakpoint: Option<BreakpointInsnKind>,
    /// Step over breakpoints by loading the whole vCPU context (slower; for
    /// diagnosis).
    #[arg(
        long,
        global = true,
        env = "XENPROBE_SLOW_STEP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub slow_step: bool,
    /// Directory for xenprobe's state about domains in dom0 (default:
    /// /run/xenprobe); every program attached to the same guests must use
    /// the same one.
    #[arg(long, global = true, env = "XENPROBE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl SettingsArgs {
    /// The settings of a program without a command line of its own for
    /// them (a test binary: libtest owns its options), from the options'
    /// environment variables alone.
    pub fn from_env() -> Result<Settings, String> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            args: SettingsArgs,
        }
        <EnvOnly as clap::Parser>::try_parse_from(["xenprobe"])
            .map(|e| e.args.settings())
            .map_err(|e| e.to_string())
    }

    /// The settings these options give.
    pub fn settings(&self) -> Settings {
        Settings {
            breakpoint: self.breakpoint,
            slow_step: self.slow_step,
            state_dir: self.state_dir.clone(),
        }
    }
}
