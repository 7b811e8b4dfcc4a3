//! Promise: at most one topic per name, whatever nodes create it at the
//! same instant: of the creates of one name, at most one succeeds, and
//! every node that finds the name afterwards finds the same group.
//! (Checked on the races of `--concurrent-creates`, off by default: the
//! current create checks, then creates, and loses that race.)

use std::collections::BTreeSet;

use super::Observed;

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for race in &o.record.races {
        let won: Vec<(u64, u64)> = race
            .creates
            .iter()
            .filter_map(|(node, r)| r.as_ref().ok().map(|g| (*node, *g)))
            .collect();
        if won.len() > 1 {
            out.push(format!(
                "{}: {} creates succeeded at once (node, group): {won:?}",
                race.name,
                won.len()
            ));
        }
        let groups: BTreeSet<u64> = race.seen.iter().filter_map(|(_, g)| *g).collect();
        if groups.len() > 1 {
            out.push(format!(
                "{}: the nodes disagree on its group (node, group): {:?}",
                race.name, race.seen
            ));
        }
    }
    out
}
