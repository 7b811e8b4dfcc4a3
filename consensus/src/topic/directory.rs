//! The cluster's name directory: which Raft group holds the topic of each
//! name. A name is claimed through consensus (the directory is a Raft
//! group of its own, [`DIRECTORY`]), so two nodes creating the same name at
//! the same instant cannot both win. See `docs/adr/0009-names-claimed-in-a-directory-group.md`.
//!
//! The directory is kept as the elements of one topic: each claim,
//! confirmation and release is an element ([`NameRecord`]), and [`Directory`]
//! is what those records say, rebuilt from them when a replica starts or
//! installs a snapshot. Deciding is pure: [`Directory::decide`] takes a
//! [`NameCommand`] and returns the record to append (if any) and the answer.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::store::{GROUP_ID_MIN, GroupId};

/// The directory's own group (and topic) id: the lowest group id, which
/// no topic's group is given.
pub const DIRECTORY: GroupId = GroupId(GROUP_ID_MIN);
/// The directory topic's name. Names under `_woof/` are woof's own.
pub const DIRECTORY_NAME: &str = "_woof/directory";
/// The prefix of names users may not create.
pub const RESERVED_PREFIX: &str = "_woof/";
/// The most peers a claim may name as its group's members.
pub const CLAIM_MEMBERS_MAX: usize = 16;
/// The most pending claims one [`NameCommand::Pending`] answers with.
pub const PENDING_MAX: usize = 64;

/// What a name holds in the directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// The group (and topic id) the name belongs to.
    pub group: u64,
    /// Peer ids of the group's first voters (where to ask whether it lives).
    pub members: Vec<String>,
    /// The claimant's clock when it claimed, in ms.
    pub at_ms: u64,
    /// The peer id of the node that claimed it.
    pub claimant: String,
    /// Which run of that node (a random number per start): a claim left
    /// pending by an earlier run is nobody's work any more.
    pub incarnation: u64,
    /// Whether the claimant finished creating the topic.
    pub confirmed: bool,
}

/// A change asked of the directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameCommand {
    /// Claims `name` for `group`, unless another group holds it. With
    /// `replace`, takes it over from that group (the caller found it gone).
    Claim {
        name: String,
        group: u64,
        members: Vec<String>,
        at_ms: u64,
        claimant: String,
        incarnation: u64,
        replace: Option<u64>,
    },
    /// The topic of `group` is created: its claim stands for good.
    Confirm { name: String, group: u64 },
    /// The topic of `group` is deleted: the name is free again.
    Release { name: String, group: u64 },
    /// Which claims of `claimant` are pending (changes nothing).
    Pending { claimant: String },
    /// The claim on `name`, if any (changes nothing): where a topic lives
    /// when the DHT has lost its record.
    Get { name: String },
}

/// The directory's answer to a [`NameCommand`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameAnswer {
    /// The name is the caller's group's (claimed, confirmed or released as asked).
    Done,
    /// Another group holds the name.
    Taken(Claim),
    /// The name is not held by the group the caller named (a confirm or
    /// release of a claim taken over meanwhile, or never made).
    NotHeld,
    /// The pending claims asked for (at most [`PENDING_MAX`]), by name.
    Pending(Vec<(String, Claim)>),
    /// The claim on the name asked for, if any.
    Held(Option<Claim>),
}

/// One element of the directory topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameRecord {
    Claim { name: String, claim: Claim },
    Confirm { name: String, group: u64 },
    Release { name: String, group: u64 },
}

/// What the records say: each held name's claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    names: BTreeMap<String, Claim>,
}

impl Directory {
    /// The claim on `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Claim> {
        self.names.get(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// What `command` does: the record to append, if it changes anything,
    /// and the answer. A command that repeats what is already recorded
    /// (a retry) appends nothing and answers [`NameAnswer::Done`].
    pub fn decide(&self, command: &NameCommand) -> Result<(Option<NameRecord>, NameAnswer)> {
        Ok(match command {
            NameCommand::Claim {
                name,
                group,
                members,
                at_ms,
                claimant,
                incarnation,
                replace,
            } => {
                if members.is_empty() || members.len() > CLAIM_MEMBERS_MAX {
                    return Err(Error::InvalidArgument(format!(
                        "a claim names 1 to {CLAIM_MEMBERS_MAX} members, not {}",
                        members.len()
                    )));
                }
                let claim = NameRecord::Claim {
                    name: name.clone(),
                    claim: Claim {
                        group: *group,
                        members: members.clone(),
                        at_ms: *at_ms,
                        claimant: claimant.clone(),
                        incarnation: *incarnation,
                        confirmed: false,
                    },
                };
                match self.names.get(name) {
                    None => (Some(claim), NameAnswer::Done),
                    Some(held) if held.group == *group => (None, NameAnswer::Done),
                    Some(held) if *replace == Some(held.group) => (Some(claim), NameAnswer::Done),
                    Some(held) => (None, NameAnswer::Taken(held.clone())),
                }
            }
            NameCommand::Confirm { name, group } => match self.names.get(name) {
                Some(held) if held.group == *group && held.confirmed => (None, NameAnswer::Done),
                Some(held) if held.group == *group => (
                    Some(NameRecord::Confirm {
                        name: name.clone(),
                        group: *group,
                    }),
                    NameAnswer::Done,
                ),
                _ => (None, NameAnswer::NotHeld),
            },
            NameCommand::Release { name, group } => match self.names.get(name) {
                Some(held) if held.group == *group => (
                    Some(NameRecord::Release {
                        name: name.clone(),
                        group: *group,
                    }),
                    NameAnswer::Done,
                ),
                _ => (None, NameAnswer::NotHeld),
            },
            NameCommand::Pending { claimant } => {
                let pending = self
                    .names
                    .iter()
                    .filter(|(_, c)| !c.confirmed && c.claimant == *claimant)
                    .take(PENDING_MAX)
                    .map(|(n, c)| (n.clone(), c.clone()))
                    .collect();
                (None, NameAnswer::Pending(pending))
            }
            NameCommand::Get { name } => (None, NameAnswer::Held(self.names.get(name).cloned())),
        })
    }

    /// Takes in one record (as appended, or read back when rebuilding).
    pub fn apply(&mut self, record: &NameRecord) {
        match record {
            NameRecord::Claim { name, claim } => {
                self.names.insert(name.clone(), claim.clone());
            }
            NameRecord::Confirm { name, group } => {
                if let Some(held) = self.names.get_mut(name)
                    && held.group == *group
                {
                    held.confirmed = true;
                }
            }
            NameRecord::Release { name, group } => {
                if self.names.get(name).is_some_and(|h| h.group == *group) {
                    self.names.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, group: u64, replace: Option<u64>) -> NameCommand {
        NameCommand::Claim {
            name: name.into(),
            group,
            members: vec!["p1".into()],
            at_ms: 10,
            claimant: "n1".into(),
            incarnation: 5,
            replace,
        }
    }

    /// Decides and, like the state machine, applies what it decided.
    fn run(d: &mut Directory, command: NameCommand) -> NameAnswer {
        let (record, answer) = d.decide(&command).unwrap();
        if let Some(r) = &record {
            d.apply(r);
        }
        answer
    }

    #[test]
    fn the_first_claim_wins_and_the_second_is_told_who_holds_the_name() {
        let mut d = Directory::default();
        assert_eq!(run(&mut d, claim("a", 1, None)), NameAnswer::Done);
        match run(&mut d, claim("a", 2, None)) {
            NameAnswer::Taken(held) => assert_eq!((held.group, held.confirmed), (1, false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.get("a").unwrap().group, 1);
    }

    #[test]
    fn a_repeated_claim_or_confirm_appends_nothing() {
        let mut d = Directory::default();
        run(&mut d, claim("a", 1, None));
        assert_eq!(
            d.decide(&claim("a", 1, None)).unwrap(),
            (None, NameAnswer::Done)
        );
        let confirm = NameCommand::Confirm {
            name: "a".into(),
            group: 1,
        };
        assert!(d.decide(&confirm).unwrap().0.is_some());
        run(&mut d, confirm.clone());
        assert!(d.get("a").unwrap().confirmed);
        assert_eq!(d.decide(&confirm).unwrap(), (None, NameAnswer::Done));
    }

    #[test]
    fn a_takeover_needs_the_group_it_replaces() {
        let mut d = Directory::default();
        run(&mut d, claim("a", 1, None));
        assert!(matches!(
            run(&mut d, claim("a", 2, Some(7))),
            NameAnswer::Taken(_)
        ));
        assert_eq!(run(&mut d, claim("a", 2, Some(1))), NameAnswer::Done);
        assert_eq!(d.get("a").unwrap().group, 2);
        // The old claimant learns it lost: its confirm and release are refused.
        for late in [
            NameCommand::Confirm {
                name: "a".into(),
                group: 1,
            },
            NameCommand::Release {
                name: "a".into(),
                group: 1,
            },
        ] {
            assert_eq!(run(&mut d, late), NameAnswer::NotHeld);
        }
        assert_eq!(d.get("a").unwrap().group, 2);
    }

    #[test]
    fn a_release_frees_the_name() {
        let mut d = Directory::default();
        run(&mut d, claim("a", 1, None));
        let release = NameCommand::Release {
            name: "a".into(),
            group: 1,
        };
        assert_eq!(run(&mut d, release.clone()), NameAnswer::Done);
        assert!(d.is_empty());
        assert_eq!(run(&mut d, release), NameAnswer::NotHeld);
        assert_eq!(run(&mut d, claim("a", 3, None)), NameAnswer::Done);
    }

    #[test]
    fn pending_claims_are_listed_by_claimant_and_change_nothing() {
        let mut d = Directory::default();
        run(&mut d, claim("a", 1, None));
        run(&mut d, claim("b", 2, None));
        run(
            &mut d,
            NameCommand::Confirm {
                name: "b".into(),
                group: 2,
            },
        );
        let mine = NameCommand::Pending {
            claimant: "n1".into(),
        };
        let (record, answer) = d.decide(&mine).unwrap();
        assert!(record.is_none());
        match answer {
            NameAnswer::Pending(p) => {
                assert_eq!(p.len(), 1);
                assert_eq!((p[0].0.as_str(), p[0].1.group), ("a", 1));
            }
            other => panic!("{other:?}"),
        }
        let theirs = NameCommand::Pending {
            claimant: "n2".into(),
        };
        assert_eq!(
            d.decide(&theirs).unwrap().1,
            NameAnswer::Pending(Vec::new())
        );
    }

    #[test]
    fn a_get_answers_the_claim_and_changes_nothing() {
        let mut d = Directory::default();
        run(&mut d, claim("a", 1, None));
        let get = |name: &str| NameCommand::Get { name: name.into() };
        let (record, answer) = d.decide(&get("a")).unwrap();
        assert!(record.is_none());
        match answer {
            NameAnswer::Held(Some(c)) => assert_eq!((c.group, c.confirmed), (1, false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.decide(&get("b")).unwrap().1, NameAnswer::Held(None));
    }

    #[test]
    fn a_claim_must_name_its_members_within_bounds() {
        let d = Directory::default();
        let mut none = claim("a", 1, None);
        if let NameCommand::Claim { members, .. } = &mut none {
            members.clear();
        }
        assert!(d.decide(&none).is_err());
        let mut many = claim("a", 1, None);
        if let NameCommand::Claim { members, .. } = &mut many {
            *members = (0..=CLAIM_MEMBERS_MAX).map(|i| i.to_string()).collect();
        }
        assert!(d.decide(&many).is_err());
    }

    #[test]
    fn rebuilding_from_the_records_gives_the_same_directory() {
        let mut d = Directory::default();
        let mut records = Vec::new();
        for command in [
            claim("a", 1, None),
            claim("b", 2, None),
            NameCommand::Confirm {
                name: "a".into(),
                group: 1,
            },
            NameCommand::Release {
                name: "b".into(),
                group: 2,
            },
            claim("b", 4, None),
        ] {
            let (record, _) = d.decide(&command).unwrap();
            if let Some(r) = record {
                d.apply(&r);
                records.push(r);
            }
        }
        let mut rebuilt = Directory::default();
        for r in &records {
            rebuilt.apply(r);
        }
        assert_eq!(rebuilt, d);
        assert_eq!(d.len(), 2);
    }
}
