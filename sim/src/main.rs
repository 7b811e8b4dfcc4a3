//! The `woof-sim` command line (see the crate documentation of `woof_sim`).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("woof-sim: the simulation is being built (issue 4); nothing to run yet")
}
