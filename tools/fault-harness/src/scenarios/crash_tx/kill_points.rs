//! Where each kill caught the creates in flight at the victim, told afterwards from the
//! client's journal, the victim's log and the rows (no test code in the product):
//!
//! - **not yet running**: an attempt was in flight but the killed life never ran its handler
//!   (the request was being read, looked up, or waiting for its claim or SQLite's write lock);
//! - **mid-handler, before its write**: the killed life ran the handler and its run did not
//!   commit, and it had not logged its insert (`deployment queued`);
//! - **written, before COMMIT**: the killed life logged a deployment that is not in the
//!   database: the write was done in the transaction, which rolled back;
//! - **committed, answer lost**: the key's committed deployment was written by the killed
//!   life, and the attempt never got its answer: killed during or right after its `COMMIT`;
//! - **answered anyway**: the answer was already on its way (in the socket) at the freeze.
//!
//! The rolled-back runs of a life are split between the two middle kinds by count: the
//! writes it logged that did not commit, and the rest.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{aim::Aim, evidence::Evidence};
use crate::{
    client::{Attempt, Outcome},
    commits::{Commits, record_of},
    report::ScenarioReport,
    scenarios::{Results, key_of},
};

/// One kill.
#[derive(Debug)]
pub(super) struct Kill {
    /// Instance index.
    pub(super) victim: usize,
    /// What its instant was drawn to find.
    pub(super) aim: Aim,
    /// The life of the victim that died (index in its log).
    pub(super) life: usize,
    /// SIGSTOP: from here on the victim does nothing.
    pub(super) frozen_at: Instant,
    /// SIGKILL.
    pub(super) killed_at: Instant,
    /// Attempts in flight to the victim at the freeze (client side).
    pub(super) in_flight: i64,
    /// Random instants drawn until one found a create in flight at the victim.
    pub(super) draws: u32,
    /// What the database showed at the freeze.
    pub(super) evidence: Evidence,
    /// Kill to ready again.
    pub(super) downtime: Duration,
}

/// Attempts in flight at a kill, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Points {
    pub(super) not_running: u32,
    pub(super) before_write: u32,
    pub(super) written: u32,
    pub(super) committed: u32,
    pub(super) answered: u32,
}

impl Points {
    fn add(&mut self, o: Self) {
        self.not_running += o.not_running;
        self.before_write += o.before_write;
        self.written += o.written;
        self.committed += o.committed;
        self.answered += o.answered;
    }

    fn text(self) -> String {
        format!(
            "{} / {} / {} / {} / {}",
            self.not_running, self.before_write, self.written, self.committed, self.answered
        )
    }
}

/// Every kill classified.
#[derive(Debug, Default)]
pub(super) struct Classified {
    pub(super) per_kill: Vec<Points>,
    pub(super) total: Points,
    /// Keys whose run in the killed life committed.
    committed_keys: Vec<usize>,
    /// Keys whose run in the killed life rolled back.
    rolled_back_keys: Vec<usize>,
    /// Lives whose rolled-back writes outnumber their rolled-back runs of keys in flight.
    odd: Vec<String>,
}

/// Classifies the attempts in flight at each kill.
pub(super) fn classify(
    kills: &[Kill],
    journal: &[Attempt],
    commits: &Commits,
    scenario: &str,
) -> Classified {
    let mut out = Classified::default();
    let records: HashMap<usize, Option<String>> = journal
        .iter()
        .map(|a| (a.key, record_of(&key_of(scenario, a.key))))
        .collect();
    for kill in kills {
        let life = (kill.victim, kill.life);
        let mut points = Points::default();
        let mut rolled_back = 0;
        let hit = journal.iter().filter(|a| {
            a.target == kill.victim
                && a.sent < kill.killed_at
                && a.done.is_none_or(|d| d >= kill.frozen_at)
        });
        for attempt in hit {
            if matches!(attempt.outcome, Some(Outcome::Answer(_))) {
                points.answered += 1;
                continue;
            }
            let Some(Some(record)) = records.get(&attempt.key) else {
                continue;
            };
            if commits.runs_in(life, record) == 0 {
                points.not_running += 1;
            } else if commits.committed_by(record) == Some(life) {
                points.committed += 1;
                out.committed_keys.push(attempt.key);
            } else {
                rolled_back += 1;
                out.rolled_back_keys.push(attempt.key);
            }
        }
        let writes = commits.rolled_back_writes(life) as u32;
        if writes > rolled_back {
            out.odd.push(format!(
                "{} life {}: {writes} writes rolled back, {rolled_back} runs in flight",
                ["A", "B"][kill.victim],
                kill.life + 1
            ));
        }
        points.written = writes.min(rolled_back);
        points.before_write = rolled_back - points.written;
        out.total.add(points);
        out.per_kill.push(points);
    }
    out
}

const KINDS: &str = "not yet running / mid-handler, before its write / written, before COMMIT / \
                     committed, answer lost / answered anyway";

impl Classified {
    /// The figures and checks of the kills.
    pub(super) fn report(&self, report: &mut ScenarioReport, kills: &[Kill], results: &Results) {
        report.figure(
            "kills: victim, aimed at, random instants drawn until found, attempts in flight",
            kills
                .iter()
                .map(|k| {
                    let victim = ["A", "B"][k.victim];
                    format!("{victim} {} {} {}", k.aim.name(), k.draws, k.in_flight)
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
        report.figure(
            format!("kill points, all kills (attempts in flight at the victim): {KINDS}"),
            self.total.text(),
        );
        report.figure(
            "kill points per kill",
            self.per_kill
                .iter()
                .map(|p| p.text().replace(" / ", "/"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let again = self
            .rolled_back_keys
            .iter()
            .filter(|k| results.created.get(k).is_some_and(|c| !c.replayed))
            .count();
        let replayed = self
            .committed_keys
            .iter()
            .filter(|k| results.created.get(k).is_some_and(|c| c.replayed))
            .count();
        report.figure(
            "afterwards: keys rolled back by a kill that ended with an original 201 (executed \
             again) / keys committed by a killed run that ended with a replay",
            format!(
                "{again} of {} / {replayed} of {}",
                self.rolled_back_keys.len(),
                self.committed_keys.len()
            ),
        );
        report.figure(
            "victim down (kill to ready)",
            kills
                .iter()
                .map(|k| crate::report::secs(k.downtime))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let (held, _, phases) =
            super::evidence::totals(&kills.iter().map(|k| k.evidence.clone()).collect::<Vec<_>>());
        let caught = held + phases.before_write + phases.written + phases.committed;
        let aimed = kills.iter().filter(|k| k.aim == Aim::InFlight);
        let (aimed, found) = (
            aimed.clone().count(),
            aimed.filter(|k| k.in_flight > 0).count(),
        );
        report.check(
            "the kills aimed at creates in flight found some, and the kills caught creates \
             inside their transactions (server side)",
            aimed == found && caught > 0 && self.odd.is_empty(),
            format!(
                "{found} of {aimed} found attempts in flight; {caught} transactions open or \
                 unacknowledged at the {} kills; {} runs rolled back by kills{}",
                kills.len(),
                self.total.before_write + self.total.written,
                if self.odd.is_empty() {
                    String::new()
                } else {
                    format!("; inconsistent: {}", self.odd.join("; "))
                }
            ),
        );
        report.check(
            "a key whose killed run had committed was answered by a replay (never run again)",
            replayed == self.committed_keys.len(),
            format!("{replayed} of {} replayed", self.committed_keys.len()),
        );
    }
}
