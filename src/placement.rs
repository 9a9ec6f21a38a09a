//! Placement: which engine each machine to create goes to. Pure: given what each engine
//! said of itself and holds, and what the machines ask for, it decides and says why.
//!
//! - A machine that exists stays where it is (the engines are the truth).
//! - `engine = "NAME"` pins a machine; `engine_labels` asks for engines whose labels match.
//! - Headroom is the engine's memory minus what envrig's machines on it reserve (their
//!   `memory`, else [`DEFAULT_MEMORY`]), then its CPUs likewise; `max_machines` caps it.
//! - Machines of one provider that reach each other by name (the environment's private
//!   network) share one engine, unless the provider's networks can span the engines of a
//!   cluster (Docker Swarm): then they may be on any engines of that one cluster.
//! - `pack` (default) puts such a group on one engine when one fits it all; `spread` puts
//!   each machine on the engine with the most headroom at that moment.

use std::collections::BTreeMap;

/// What a machine that does not say its memory is taken to reserve.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// One engine endpoint a provider can place on, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub max_machines: Option<u32>,
    pub cpus: u32,
    pub memory: u64,
    /// Reserved by envrig's machines on it now.
    pub reserved_memory: u64,
    pub reserved_cpus: u32,
    pub machines: usize,
    /// The cluster it is a node of, and whether it is a manager there.
    pub cluster: Option<(String, bool)>,
}

/// A machine to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub machine: String,
    pub memory: u64,
    pub cpus: u32,
    pub pin: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The engine it already is on: it stays.
    pub existing: Option<String>,
}

/// Where a provider's machines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Machine → engine.
    pub engine_of: BTreeMap<String, String>,
    /// Machine → why there.
    pub why: BTreeMap<String, String>,
    /// The machines are on several engines of one cluster: the network spans it, made
    /// through this manager engine.
    pub span_through: Option<String>,
}

impl Candidate {
    fn free_memory(&self) -> u64 {
        self.memory.saturating_sub(self.reserved_memory)
    }

    fn fits(&self, w: &Want) -> Result<(), String> {
        if let Some(max) = self.max_machines
            && self.machines as u64 >= u64::from(max)
        {
            return Err(format!("`{}` holds its most machines ({max})", self.name));
        }
        if self.memory > 0 && self.free_memory() < w.memory {
            return Err(format!(
                "`{}` has {} MiB free, `{}` wants {} MiB",
                self.name,
                self.free_memory() >> 20,
                w.machine,
                w.memory >> 20
            ));
        }
        Ok(())
    }

    fn allows(&self, w: &Want) -> Result<(), String> {
        if let Some(pin) = &w.pin
            && pin != &self.name
        {
            return Err(format!("`{}` is pinned to `{pin}`", w.machine));
        }
        for (k, v) in &w.labels {
            if self.labels.get(k) != Some(v) {
                return Err(format!("`{}` lacks the label {k}={v}", self.name));
            }
        }
        Ok(())
    }

    /// Larger is roomier: free memory first, then free CPUs, then fewer machines.
    fn room(&self) -> (u64, i64, i64) {
        (
            self.free_memory() >> 20,
            i64::from(self.cpus) - i64::from(self.reserved_cpus),
            -(self.machines as i64),
        )
    }

    fn take(&mut self, w: &Want) {
        self.reserved_memory += w.memory;
        self.reserved_cpus += w.cpus;
        self.machines += 1;
    }
}

/// The roomiest of `cands` that allows and fits `w` (ties: the first by name); else why
/// none does.
fn best<'a>(cands: &'a [Candidate], w: &Want) -> Result<&'a Candidate, String> {
    let mut why = Vec::new();
    let mut pick: Option<&Candidate> = None;
    for c in cands {
        match c.allows(w).and_then(|()| c.fits(w)) {
            Ok(()) => {
                if pick.is_none_or(|p| c.room() > p.room()) {
                    pick = Some(c);
                }
            }
            Err(e) => why.push(e),
        }
    }
    pick.ok_or_else(|| {
        if cands.is_empty() {
            "no engine answers".to_string()
        } else {
            why.join("; ")
        }
    })
}

/// Places `wants` (one provider's machines) on `cands`. `together`: they reach each other
/// by name; `can_span`: the provider's networks can span a cluster's engines.
pub fn place(
    wants: &[Want],
    cands: &[Candidate],
    spread: bool,
    together: bool,
    can_span: bool,
) -> Result<Placement, String> {
    let mut cands: Vec<Candidate> = cands.to_vec();
    cands.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Placement::default();
    let (placed, todo): (Vec<&Want>, Vec<&Want>) = wants.iter().partition(|w| w.existing.is_some());
    for w in &placed {
        let e = w.existing.clone().unwrap_or_default();
        out.why.insert(w.machine.clone(), "already there".into());
        out.engine_of.insert(w.machine.clone(), e);
    }
    if !together || wants.len() < 2 {
        for w in todo {
            let c = best(&cands, w).map_err(|e| format!("no engine for `{}`: {e}", w.machine))?;
            let name = c.name.clone();
            out.why
                .insert(w.machine.clone(), "the most headroom".into());
            out.engine_of.insert(w.machine.clone(), name.clone());
            if let Some(c) = cands.iter_mut().find(|c| c.name == name) {
                c.take(w);
            }
        }
        return Ok(out);
    }
    // The group reaches each other by name: one engine, or one cluster's engines.
    let fixed: Vec<&String> = out.engine_of.values().collect();
    let one_engine = |cands: &[Candidate]| -> Result<String, String> {
        // Engines the whole group can be on: where the existing ones are, else any that
        // allows every machine; the roomiest that fits them all.
        let mut reasons = Vec::new();
        let mut pick: Option<&Candidate> = None;
        for c in cands {
            if fixed.iter().any(|f| **f != c.name) {
                reasons.push(format!(
                    "`{}`: the environment's other machines are elsewhere",
                    c.name
                ));
                continue;
            }
            let mut trial = c.clone();
            let mut ok = Ok(());
            for w in &todo {
                ok = trial.allows(w).and_then(|()| trial.fits(w));
                if ok.is_err() {
                    break;
                }
                trial.take(w);
            }
            match ok {
                Ok(()) => {
                    if pick.is_none_or(|p| c.room() > p.room()) {
                        pick = Some(c);
                    }
                }
                Err(e) => reasons.push(e),
            }
        }
        pick.map(|c| c.name.clone())
            .ok_or_else(|| reasons.join("; "))
    };
    let single = one_engine(&cands);
    if let (Ok(e), false) = (&single, spread) {
        for w in &todo {
            out.why.insert(
                w.machine.clone(),
                "pack: the environment on one engine".into(),
            );
            out.engine_of.insert(w.machine.clone(), e.clone());
        }
        return Ok(out);
    }
    // Spread (or nothing fits the group whole): over the engines of one cluster.
    let mut clusters: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    if can_span {
        for c in &cands {
            if let Some((id, _)) = &c.cluster {
                clusters.entry(id.clone()).or_default().push(c.clone());
            }
        }
    }
    let mut reasons = Vec::new();
    for (id, mut members) in clusters {
        let Some(manager) = members
            .iter()
            .find(|c| c.cluster.as_ref().is_some_and(|(_, m)| *m))
            .map(|c| c.name.clone())
        else {
            reasons.push(format!("cluster {id}: no manager engine answers"));
            continue;
        };
        if fixed.iter().any(|f| !members.iter().any(|c| &c.name == *f)) {
            reasons.push(format!(
                "cluster {id}: the environment's other machines are outside it"
            ));
            continue;
        }
        let mut trial = out.clone();
        let mut failed = None;
        for w in &todo {
            match best(&members, w) {
                Ok(c) => {
                    let name = c.name.clone();
                    trial
                        .why
                        .insert(w.machine.clone(), "spread over one Swarm's engines".into());
                    trial.engine_of.insert(w.machine.clone(), name.clone());
                    if let Some(c) = members.iter_mut().find(|c| c.name == name) {
                        c.take(w);
                    }
                }
                Err(e) => {
                    failed = Some(format!("no engine for `{}`: {e}", w.machine));
                    break;
                }
            }
        }
        match failed {
            None => {
                let used: std::collections::BTreeSet<&String> = trial.engine_of.values().collect();
                if used.len() > 1 {
                    trial.span_through = Some(manager);
                }
                return Ok(trial);
            }
            Some(e) => reasons.push(e),
        }
    }
    match single {
        Ok(e) => {
            // Spread asked, but no cluster shares networks: names need one engine.
            for w in &todo {
                out.why.insert(
                    w.machine.clone(),
                    "one engine: no cluster of these engines shares networks, and the machines reach each other by name".into(),
                );
                out.engine_of.insert(w.machine.clone(), e.clone());
            }
            Ok(out)
        }
        Err(e) => {
            reasons.insert(0, e);
            Err(format!(
                "no engine (or cluster of engines) can hold the environment's machines together: {}",
                reasons.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, mem_mib: u64, machines: usize, cluster: Option<(&str, bool)>) -> Candidate {
        Candidate {
            name: name.into(),
            labels: BTreeMap::new(),
            max_machines: None,
            cpus: 2,
            memory: mem_mib << 20,
            reserved_memory: machines as u64 * DEFAULT_MEMORY,
            reserved_cpus: 0,
            machines,
            cluster: cluster.map(|(i, m)| (i.to_string(), m)),
        }
    }

    fn w(name: &str) -> Want {
        Want {
            machine: name.into(),
            memory: DEFAULT_MEMORY,
            cpus: 1,
            pin: None,
            labels: BTreeMap::new(),
            existing: None,
        }
    }

    fn engines(p: &Placement) -> Vec<&str> {
        p.engine_of.values().map(String::as_str).collect()
    }

    #[test]
    fn lone_machines_go_where_there_is_most_room() {
        let cands = [c("a", 4096, 3, None), c("b", 4096, 0, None)];
        let p = place(&[w("x")], &cands, false, false, false).unwrap();
        assert_eq!(engines(&p), ["b"]);
        // Spread without names: one each while they are equal.
        let cands = [c("a", 4096, 0, None), c("b", 4096, 0, None)];
        let p = place(&[w("x"), w("y")], &cands, true, false, false).unwrap();
        assert_eq!(engines(&p), ["a", "b"]);
    }

    #[test]
    fn pins_labels_and_caps_are_kept() {
        let mut cands = vec![c("a", 4096, 0, None), c("b", 4096, 0, None)];
        cands[1].labels.insert("gpu".into(), "yes".into());
        cands[0].max_machines = Some(1);
        let mut x = w("x");
        x.pin = Some("a".into());
        let mut y = w("y");
        y.labels.insert("gpu".into(), "yes".into());
        let p = place(&[x.clone(), y], &cands, false, false, false).unwrap();
        assert_eq!(p.engine_of["x"], "a");
        assert_eq!(p.engine_of["y"], "b");
        // `a` is full after x: a second pinned machine cannot go.
        let mut z = w("z");
        z.pin = Some("a".into());
        let e = place(&[x, z], &cands, false, false, false).unwrap_err();
        assert!(e.contains("holds its most machines"), "{e}");
    }

    #[test]
    fn a_named_group_packs_on_one_engine_and_spreads_only_over_a_swarm() {
        let cands = [
            c("a", 4096, 0, Some(("s", true))),
            c("b", 4096, 0, Some(("s", false))),
            c("c", 4096, 0, Some(("s", false))),
        ];
        let group = [w("x"), w("y"), w("z")];
        let p = place(&group, &cands, false, true, true).unwrap();
        assert_eq!(engines(&p), ["a", "a", "a"]);
        assert_eq!(p.span_through, None);
        let p = place(&group, &cands, true, true, true).unwrap();
        assert_eq!(engines(&p), ["a", "b", "c"]);
        assert_eq!(p.span_through.as_deref(), Some("a"));
        // No cluster (or a provider whose networks cannot span): one engine, said why.
        let p = place(&group, &cands, true, true, false).unwrap();
        assert_eq!(engines(&p), ["a", "a", "a"]);
        assert!(p.why["x"].contains("no cluster"), "{:?}", p.why);
    }

    #[test]
    fn existing_machines_stay_and_hold_their_group() {
        let cands = [c("a", 4096, 0, None), c("b", 8192, 0, None)];
        let mut x = w("x");
        x.existing = Some("a".into());
        let p = place(&[x, w("y")], &cands, false, true, false).unwrap();
        assert_eq!(engines(&p), ["a", "a"]);
        // A group too big for any one engine, with no Swarm: refused, saying why.
        let cands = [c("a", 300, 0, None), c("b", 300, 0, None)];
        let e = place(&[w("x"), w("y")], &cands, false, true, true).unwrap_err();
        assert!(e.contains("together"), "{e}");
    }
}
