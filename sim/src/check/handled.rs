//! Promise: every committed element of a handled topic gives its handler's
//! outputs exactly once, in order, through crashes, partitions and leader
//! changes (ADR 11), and once the faults stop the handler catches up.
//!
//! The run binds a `forward` handler from the first element of its first
//! topic on, so the output topic must hold exactly the input's payloads, in
//! the input's order.

use super::Observed;

pub fn check(o: &Observed) -> Vec<String> {
    match &o.handled {
        Some(Ok(h)) => compare(h),
        Some(Err(why)) => vec![format!(
            "the handled topic and its outputs could not be read after the faults ({why})"
        )],
        None if o.plans.is_empty() => Vec::new(),
        None => vec!["the run's topic was not checked for its handler".into()],
    }
}

fn compare(h: &super::Handled) -> Vec<String> {
    let mut out = Vec::new();
    let last = h.input.last().map_or(0, |(seq, _)| *seq);
    if h.done < last {
        out.push(format!(
            "the handler finished {} of the {last} elements after the faults",
            h.done
        ));
    }
    let input: Vec<&Vec<u8>> = h.input.iter().map(|(_, p)| p).collect();
    let done = input.len().min(h.done as usize);
    // The outputs of what it finished, in order; past that, a prefix of
    // the rest (outputs may land before the progress that covers them).
    for (i, output) in h.output.iter().enumerate() {
        match input.get(i) {
            Some(expected) if *expected == output => {}
            Some(expected) => {
                let seq = h.input[i].0;
                out.push(format!(
                    "output {} is {:?}, the handler's output of element {seq} is {:?} \
                     (one lost or doubled before it)",
                    i + 1,
                    String::from_utf8_lossy(output),
                    String::from_utf8_lossy(expected)
                ));
                return out;
            }
            None => {
                out.push(format!(
                    "{} outputs for {} elements: output {} has no element",
                    h.output.len(),
                    input.len(),
                    i + 1
                ));
                return out;
            }
        }
    }
    if h.output.len() < done {
        let seq = h.input[h.output.len()].0;
        out.push(format!(
            "{} outputs, but the handler finished {} elements: element {seq}'s output is missing",
            h.output.len(),
            h.done
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Handled;

    fn found(output: &[&str], done: u64) -> Vec<String> {
        let h = Handled {
            input: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 + 1, p.as_bytes().to_vec()))
                .collect(),
            output: output.iter().map(|p| p.as_bytes().to_vec()).collect(),
            done,
        };
        super::compare(&h)
    }

    #[test]
    fn outputs_lost_doubled_or_behind_are_found() {
        assert!(found(&["a", "b", "c"], 3).is_empty());
        assert!(found(&["a", "c"], 3)[0].contains("lost or doubled"));
        assert!(found(&["a", "a", "b", "c"], 3)[0].contains("lost or doubled"));
        assert!(found(&["a", "b", "c", "c"], 3)[0].contains("has no element"));
        assert!(found(&["a"], 3)[0].contains("element 2's output is missing"));
        assert!(found(&["a", "b", "c"], 1)[0].contains("finished 1 of the 3"));
    }
}
