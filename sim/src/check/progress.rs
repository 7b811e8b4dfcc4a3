//! Promise: after the faults stop and the network heals, every topic makes
//! progress again within a bounded simulated time: an append to it is
//! acknowledged within [`PROGRESS_MS_MAX`] of the heal (the probe each
//! topic gets then), and its replicas all hold the same elements within
//! the catch-up time that follows (`SETTLE_MS_MAX` in lib.rs).

use super::Observed;

/// How long after the heal a topic's probe may take to be acknowledged.
pub const PROGRESS_MS_MAX: u64 = 10_000;

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let progress = &o.record.progress;
    for plan in o.plans {
        let t = plan.index;
        match progress.probes.iter().find(|p| p.topic == t) {
            None => out.push(format!("t{t}: no probe after the heal")),
            Some(p) => match p.acked_ms {
                Some(at) if at.saturating_sub(progress.healed_ms) <= PROGRESS_MS_MAX => {}
                Some(at) => out.push(format!(
                    "t{t}: the probe was acknowledged {} ms after the heal (at most {PROGRESS_MS_MAX})",
                    at.saturating_sub(progress.healed_ms)
                )),
                None => out.push(format!(
                    "t{t}: no append acknowledged after the heal ({} attempts): {:?}",
                    p.attempts, p.result
                )),
            },
        }
    }
    for (topic, lasts) in &progress.lagging {
        out.push(format!(
            "t{topic}: replicas did not catch up after the heal (last seqs {lasts:?})"
        ));
    }
    out
}
