//! Promise: a topic whose replica is lost for longer than the repair time
//! gets a new replica, chosen by its own placement rule, and is back to
//! full strength: by the end every topic has its replication factor of
//! voters, every one of them up (so the node lost for good after the heal,
//! when the cluster could spare one, is none of them), and the progress
//! checker sees them catch up. A new replica becomes a voter only once it
//! holds the log ([`crate::joins`] watches each membership as it commits):
//! the group never counts a voter that holds nothing.

use super::Observed;

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for j in &o.record.late_joins {
        let what = o
            .plans
            .iter()
            .find(|p| p.group.0 == j.group)
            .map_or(format!("group {}", j.group), |p| format!("t{}", p.index));
        out.push(format!(
            "{what}: n{} was made a voter at {} ms by the membership at log index {}, holding the log only to {} (a new replica must catch up first)",
            j.node, j.at_ms, j.membership_at, j.held
        ));
    }
    let progress = &o.record.progress;
    for plan in o.plans {
        let t = plan.index;
        let Some(voters) = o.voters.get(&t) else {
            out.push(format!("t{t}: no replica knows its voters at the end"));
            continue;
        };
        if voters.len() != o.replication {
            out.push(format!(
                "t{t}: {} voters at the end {voters:?}, not {}",
                voters.len(),
                o.replication
            ));
        }
        for v in voters {
            if progress.lost == Some(*v) {
                out.push(format!(
                    "t{t}: its replica on n{v}, lost for good, was never replaced (voters {voters:?})"
                ));
            } else if !progress.up.contains(v) {
                out.push(format!("t{t}: voter n{v} is down at the end"));
            }
        }
    }
    out
}
