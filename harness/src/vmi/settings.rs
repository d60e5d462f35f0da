//! Engine settings. The programs choose them (command-line options, with
//! their environment fallbacks in the binaries) and hand them to [`Xen`];
//! the engine never reads the environment.
//!
//! [`Xen`]: super::Xen

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
        }
    }
}
