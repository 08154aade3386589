//! Which run of a key's handler committed, in transactional mode: the check of
//! [`Contract::Atomic`].
//!
//! Executions come from the execution log, never from rows: every run of the handler logs
//! its record before it does anything else (killed runs included). Rows say what committed.
//! Joining the two per key, through the `deployment queued` line each insert logs with its
//! deployment id, tells which life's run wrote the committed row, and so, for every other
//! run, that it did not commit. The contract:
//!
//! - one committed deployment per logical create (checked by [`Verification`]);
//! - no run committed beyond one per key: no second row, no guard hit (the database guard
//!   answering a run means the key's record was gone while its deployment was there);
//! - every run that did not commit died with an instance the harness SIGKILLed: a run on an
//!   instance that lived on either committed or was never needed.

use std::collections::{HashMap, HashSet};

use tower_idempotency::{IdempotencyKey, Scope, store::RecordId};

use crate::{
    db::{USER, Verification},
    executions::{Contract, Executions},
    report::ScenarioReport,
};

/// A life of an instance: `(instance index, life index)` in [`Executions::instances`] and
/// its log's lives.
pub(crate) type LifeRef = (usize, usize);

/// The layer's record id (hex) of [`USER`]'s `key`, as the execution log names it.
pub(crate) fn record_of(key: &str) -> Option<String> {
    let key = IdempotencyKey::parse(key.as_bytes()).ok()?;
    let scope = Scope::from(USER);
    Some(RecordId::new(scope.as_bytes(), &key).to_hex())
}

/// The runs and the commits of a scenario, joined.
#[derive(Debug, Default)]
pub(crate) struct Commits {
    /// Per record: the committed deployment ids (one, when all is well).
    committed: HashMap<String, Vec<String>>,
    /// Committed deployment id → the lives that logged writing it.
    writers: HashMap<String, Vec<LifeRef>>,
    /// Lives that ended by a SIGKILL.
    killed: HashSet<LifeRef>,
    /// Per life: runs per record.
    runs: HashMap<LifeRef, HashMap<String, u64>>,
    /// Per life: deployments written that are not in the database (rolled back).
    rolled_back_writes: HashMap<LifeRef, usize>,
    /// Keys of rows whose record id could not be derived.
    bad_keys: Vec<String>,
    guard_hits: u64,
}

/// The figures of [`Commits::tally`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Runs of the handler, every life.
    pub(crate) runs: u64,
    /// Runs beyond the first per key.
    pub(crate) re_executions: u64,
    /// Runs that did not commit and died with a SIGKILLed instance.
    pub(crate) died_uncommitted: u64,
    /// Runs that did not commit on a life that was not killed.
    pub(crate) lost_on_survivors: u64,
    /// Commits beyond one per key: extra rows plus guard hits.
    pub(crate) extra_commits: u64,
    /// Committed rows no run of the right key is known to have written.
    pub(crate) unexplained_rows: u64,
}

impl Commits {
    /// Joins the execution logs of `executions` with `rows` (`(idempotency_key, id)` of every
    /// deployment).
    pub(crate) fn join(executions: &Executions, rows: &[(Option<String>, String)]) -> Self {
        let mut out = Self {
            guard_hits: executions.guard_hits(),
            ..Self::default()
        };
        let mut ids = HashSet::new();
        for (key, id) in rows {
            ids.insert(id.as_str());
            let Some(key) = key else { continue };
            match record_of(key) {
                Some(record) => out.committed.entry(record).or_default().push(id.clone()),
                None => out.bad_keys.push(key.clone()),
            }
        }
        for (i, instance) in executions.instances.iter().enumerate() {
            let Some(log) = &instance.log else { continue };
            for (l, life) in log.runs.iter().enumerate() {
                let at = (i, l);
                out.runs.insert(at, life.records.clone());
                for id in &life.queued {
                    if ids.contains(id.as_str()) {
                        out.writers.entry(id.clone()).or_default().push(at);
                    } else {
                        *out.rolled_back_writes.entry(at).or_default() += 1;
                    }
                }
            }
            out.killed
                .extend(instance.killed_lives.iter().map(|&life| (i, life)));
        }
        out
    }

    /// Runs of `record` in `life`.
    pub(crate) fn runs_in(&self, life: LifeRef, record: &str) -> u64 {
        self.runs
            .get(&life)
            .and_then(|r| r.get(record))
            .copied()
            .unwrap_or(0)
    }

    /// The life whose run wrote `record`'s committed deployment (if exactly one did).
    pub(crate) fn committed_by(&self, record: &str) -> Option<LifeRef> {
        match self.committed.get(record).map(Vec::as_slice) {
            Some([id]) => match self.writers.get(id).map(Vec::as_slice) {
                Some([life]) => Some(*life),
                _ => None,
            },
            _ => None,
        }
    }

    /// Deployments `life` wrote that did not commit.
    pub(crate) fn rolled_back_writes(&self, life: LifeRef) -> usize {
        self.rolled_back_writes.get(&life).copied().unwrap_or(0)
    }

    /// Counts every run as committed, died uncommitted, or lost on a survivor.
    pub(crate) fn tally(&self) -> Tally {
        let mut t = Tally {
            extra_commits: self.guard_hits,
            unexplained_rows: self.bad_keys.len() as u64,
            ..Tally::default()
        };
        let mut per_record: HashMap<&str, (u64, u64)> = HashMap::new();
        for (life, records) in &self.runs {
            for (record, n) in records {
                let entry = per_record.entry(record).or_default();
                if self.killed.contains(life) {
                    entry.0 += n;
                } else {
                    entry.1 += n;
                }
            }
        }
        for ids in self.committed.values() {
            t.extra_commits += ids.len().saturating_sub(1) as u64;
        }
        for (record, (killed, surviving)) in per_record {
            t.runs += killed + surviving;
            t.re_executions += (killed + surviving).saturating_sub(1);
            let writer = if self.committed.contains_key(record) {
                match self.committed_by(record) {
                    Some(life) if self.runs_in(life, record) > 0 => Some(life),
                    _ => {
                        t.unexplained_rows += 1;
                        None
                    }
                }
            } else {
                None
            };
            let (killed_commit, surviving_commit) = match writer {
                Some(life) if self.killed.contains(&life) => (1, 0),
                Some(_) => (0, 1),
                None => (0, 0),
            };
            t.died_uncommitted += killed - killed_commit;
            t.lost_on_survivors += surviving - surviving_commit;
        }
        // Rows of keys that never ran at all.
        let ran: HashSet<&String> = self.runs.values().flat_map(HashMap::keys).collect();
        t.unexplained_rows += self.committed.keys().filter(|r| !ran.contains(r)).count() as u64;
        t
    }

    /// The figures and checks of [`Contract::Atomic`] (with the common checks, which verify
    /// one deployment per key with the ids the clients got).
    pub(crate) fn report(
        &self,
        report: &mut ScenarioReport,
        executions: &Executions,
        verification: &Verification,
    ) {
        let t = self.tally();
        report.figure(
            "runs of the handler / re-executions (beyond one per key) / runs that did not \
             commit: died with their SIGKILLed instance, on a surviving one",
            format!(
                "{} / {} / {}, {}",
                t.runs, t.re_executions, t.died_uncommitted, t.lost_on_survivors
            ),
        );
        report.figure(
            "committed deployments per logical create / re-executions whose effects committed \
             (a second row or a guard hit) / guard hits",
            format!(
                "{} / {} / {}",
                per_create(verification),
                t.extra_commits,
                self.guard_hits
            ),
        );
        let readable = executions.readable();
        report.check(
            "no re-execution's effects committed: 0 guard hits, no second row for any key \
             (contract: atomic)",
            readable && t.extra_commits == 0 && verification.duplicates == 0,
            format!(
                "{} guard hits, {} rows beyond one per key",
                self.guard_hits, verification.duplicates
            ),
        );
        report.check(
            "every run that did not commit died with a SIGKILLed instance; every committed \
             row was written by a run of its key",
            readable && t.lost_on_survivors == 0 && t.unexplained_rows == 0,
            format!(
                "{} re-executions: {} rolled back with their killed instance, {} by survivors; \
                 {} rows without their run",
                t.re_executions, t.died_uncommitted, t.lost_on_survivors, t.unexplained_rows
            ),
        );
    }
}

/// "1" when every key has exactly one row, else what was found.
fn per_create(verification: &Verification) -> String {
    if verification.missing.is_empty() && verification.duplicated.is_empty() {
        "1".to_owned()
    } else {
        format!(
            "not 1: {} keys without a row, {} with several",
            verification.missing.len(),
            verification.duplicated.len()
        )
    }
}

/// The contract [`Commits`] checks.
pub(crate) const CONTRACT: Contract = Contract::Atomic;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{executions::Instance, logs::LogScan};

    fn log(lives: &[&[(&str, Option<&str>)]]) -> LogScan {
        let mut text = String::new();
        for life in lives {
            text.push_str(r#"{"level":"INFO","message":"listening","target":"backend"}"#);
            text.push('\n');
            for (key, queued) in *life {
                let record = record_of(key).unwrap();
                text.push_str(&format!(
                    r#"{{"message":"create handler executing","record":"{record}","target":"backend::executions"}}"#
                ));
                text.push('\n');
                if let Some(id) = queued {
                    text.push_str(&format!(
                        r#"{{"message":"deployment queued","deployment":"{id}","target":"backend::api::deployments::create"}}"#
                    ));
                    text.push('\n');
                }
            }
        }
        LogScan::parse(&text)
    }

    fn instance(name: &str, log: LogScan, killed_lives: Vec<usize>) -> Instance {
        Instance {
            name: name.to_owned(),
            alive: true,
            log: Some(log),
            counters: None,
            killed_lives,
        }
    }

    fn rows(pairs: &[(&str, &str)]) -> Vec<(Option<String>, String)> {
        pairs
            .iter()
            .map(|(k, id)| (Some((*k).to_owned()), (*id).to_owned()))
            .collect()
    }

    #[test]
    fn runs_that_died_uncommitted_are_told_from_runs_that_committed() {
        // A's first life is killed: k1's run wrote d1 and rolled back, k2's run committed
        // d2 (its answer lost). k1 runs again on B and commits d1b.
        let a = log(&[
            &[("k1", Some("d1")), ("k2", Some("d2"))],
            &[("k3", Some("d3"))],
        ]);
        let b = log(&[&[("k1", Some("d1b"))]]);
        let executions = Executions {
            instances: vec![instance("A", a, vec![0]), instance("B", b, vec![])],
            ..Executions::default()
        };
        let commits = Commits::join(
            &executions,
            &rows(&[("k1", "d1b"), ("k2", "d2"), ("k3", "d3")]),
        );
        let t = commits.tally();
        assert_eq!((t.runs, t.re_executions), (4, 1));
        assert_eq!((t.died_uncommitted, t.lost_on_survivors), (1, 0));
        assert_eq!((t.extra_commits, t.unexplained_rows), (0, 0));
        let k2 = record_of("k2").unwrap();
        assert_eq!(commits.committed_by(&k2), Some((0, 0)));
        assert_eq!(commits.runs_in((0, 0), &k2), 1);
        assert_eq!(commits.rolled_back_writes((0, 0)), 1);
        assert_eq!(commits.rolled_back_writes((1, 0)), 0);
    }

    #[test]
    fn a_run_again_on_a_survivor_or_a_row_without_its_run_is_caught() {
        // k1 committed on A (which lived on); B ran it again without writing (a guard hit,
        // or a run the database rolled back): not a run that died with its instance.
        let a = log(&[&[("k1", Some("d1"))]]);
        let b = log(&[&[("k1", None)]]);
        let executions = Executions {
            instances: vec![instance("A", a, vec![]), instance("B", b, vec![])],
            ..Executions::default()
        };
        let t = Commits::join(&executions, &rows(&[("k1", "d1")])).tally();
        assert_eq!((t.re_executions, t.lost_on_survivors), (1, 1));

        // A row no run logged writing (its line lost: written after the commit).
        let a = log(&[&[("k1", None)]]);
        let executions = Executions {
            instances: vec![instance("A", a, vec![0])],
            ..Executions::default()
        };
        let t = Commits::join(&executions, &rows(&[("k1", "d1"), ("k1", "d2")])).tally();
        assert_eq!((t.extra_commits, t.unexplained_rows), (1, 1));
    }
}
