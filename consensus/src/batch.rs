//! Filling a batch from a queue, bounded in items and bytes: the one rule
//! that the standalone writer's group commit ([`crate::local`]), a group
//! leader's group commit and the Raft transport (both in the node's
//! `groups`) share.

/// How large a batch may grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub items_max: usize,
    pub bytes_max: usize,
}

/// A batch: `first`, then what `more` yields while the batch holds fewer
/// than `items_max` items and its size stays within `bytes_max`. The item
/// that did not fit comes back as the second value, for the next batch. A
/// first item larger than `bytes_max` still goes, alone: nothing waits
/// forever for room.
pub fn fill<T>(
    first: T,
    mut more: impl FnMut() -> Option<T>,
    limits: Limits,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, Option<T>) {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < limits.items_max {
        let Some(next) = more() else { break };
        let n = size(&next);
        if bytes + n > limits.bytes_max {
            return (batch, Some(next));
        }
        bytes += n;
        batch.push(next);
    }
    assert!(!batch.is_empty(), "a batch is never empty");
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(items: &[usize], limits: Limits) -> (Vec<usize>, Option<usize>, Vec<usize>) {
        let mut rest = items[1..].to_vec();
        rest.reverse();
        let (batch, carry) = fill(items[0], || rest.pop(), limits, |n| *n);
        rest.reverse();
        (batch, carry, rest)
    }

    #[test]
    fn takes_items_up_to_the_count() {
        let limits = Limits {
            items_max: 3,
            bytes_max: 1000,
        };
        assert_eq!(
            run(&[1, 2, 3, 4, 5], limits),
            (vec![1, 2, 3], None, vec![4, 5])
        );
        assert_eq!(run(&[1, 2], limits), (vec![1, 2], None, vec![]));
    }

    #[test]
    fn stops_before_the_bytes_and_carries_what_did_not_fit() {
        let limits = Limits {
            items_max: 100,
            bytes_max: 10,
        };
        assert_eq!(run(&[4, 6, 1, 2], limits), (vec![4, 6], Some(1), vec![2]));
        assert_eq!(run(&[4, 7, 1], limits), (vec![4], Some(7), vec![1]));
    }

    #[test]
    fn an_item_larger_than_the_bound_goes_alone() {
        let limits = Limits {
            items_max: 100,
            bytes_max: 10,
        };
        assert_eq!(run(&[50, 1], limits), (vec![50], Some(1), vec![]));
        assert_eq!(run(&[50], limits), (vec![50], None, vec![]));
    }
}
