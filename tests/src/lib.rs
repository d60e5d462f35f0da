//! Shared helpers for the live-guest suites.
