//! Placeholder until the guests command lands (owned by the guests work).
use anyhow::Result;

#[derive(clap::Args)]
pub struct GuestsArgs {}

pub fn main(_: GuestsArgs) -> Result<i32> {
    anyhow::bail!("guests: not built yet")
}
