//! The guest mode: how a Xen guest boots and what the hypervisor can do
//! with it.

use std::fmt;
use std::str::FromStr;

/// How a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GuestMode {
    /// Paravirtualised.
    Pv,
    /// PVH: an HVM container without emulated devices.
    Pvh,
    /// Fully virtualised.
    Hvm,
}

impl GuestMode {
    /// Every mode.
    pub const ALL: [GuestMode; 3] = [GuestMode::Pv, GuestMode::Pvh, GuestMode::Hvm];
    /// The modes with vm_event (HVM containers).
    pub const HVM_CONTAINERS: [GuestMode; 2] = [GuestMode::Pvh, GuestMode::Hvm];

    /// The lowercase name used in xl's `type=`, image and test names.
    pub fn name(self) -> &'static str {
        match self {
            GuestMode::Pv => "pv",
            GuestMode::Pvh => "pvh",
            GuestMode::Hvm => "hvm",
        }
    }

    /// HVM container (HVM or PVH): vm_event is available.
    pub fn is_hvm_container(self) -> bool {
        self != GuestMode::Pv
    }
}

/// Uppercase, as in messages: `PV`, `PVH`, `HVM`.
impl fmt::Display for GuestMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestMode::Pv => "PV",
            GuestMode::Pvh => "PVH",
            GuestMode::Hvm => "HVM",
        })
    }
}

/// A name that is not a guest mode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown guest mode {0:?} (expected pv, pvh or hvm)")]
pub struct UnknownMode(pub String);

/// Any case: `pvh`, `PVH`.
impl FromStr for GuestMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GuestMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in GuestMode::ALL {
            assert_eq!(m.name().parse(), Ok(m));
            assert_eq!(m.to_string().parse(), Ok(m));
        }
        assert!("pvhx".parse::<GuestMode>().is_err());
        assert_eq!(
            GuestMode::ALL.map(GuestMode::is_hvm_container),
            [false, true, true]
        );
    }
}
