//! The dependency cycle check: every cycle of `depends_on`, reported once and named.

use std::collections::{BTreeMap, BTreeSet};

use super::diag::Diagnostic;
use super::read::join;
use super::values::Name;
use super::{KeySpan, Machine};

/// Reports each dependency cycle once, naming it (`a -> b -> a`).
pub(super) fn check_cycles(machines: &[Machine], diags: &mut Vec<Diagnostic>) {
    let index: BTreeMap<&Name, usize> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| (&m.name, i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut color = vec![0u8; machines.len()];
    let mut reported = BTreeSet::new();
    fn visit(
        i: usize,
        machines: &[Machine],
        index: &BTreeMap<&Name, usize>,
        color: &mut [u8],
        stack: &mut Vec<usize>,
        reported: &mut BTreeSet<Vec<usize>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        color[i] = 1;
        stack.push(i);
        for d in &machines[i].depends_on {
            let Some(&j) = index.get(d) else { continue };
            if color[j] == 1 {
                let start = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[start..].to_vec();
                let mut key = cycle.clone();
                key.sort();
                if reported.insert(key) {
                    cycle.push(j);
                    let names: Vec<&str> =
                        cycle.iter().map(|&c| machines[c].name.as_str()).collect();
                    let m = &machines[j];
                    let at = m.origins.get("depends_on").cloned().unwrap_or(KeySpan {
                        path: join("machines", m.name.as_str()),
                        span: m.span.clone(),
                    });
                    diags.push(
                        Diagnostic::error(
                            at.path,
                            at.span,
                            format!("dependency cycle: {}", names.join(" -> ")),
                        )
                        .with_help("remove one of these `depends_on` entries"),
                    );
                }
            } else if color[j] == 0 {
                visit(j, machines, index, color, stack, reported, diags);
            }
        }
        stack.pop();
        color[i] = 2;
    }
    for i in 0..machines.len() {
        if color[i] == 0 {
            let mut stack = Vec::new();
            visit(
                i,
                machines,
                &index,
                &mut color,
                &mut stack,
                &mut reported,
                diags,
            );
        }
    }
}
