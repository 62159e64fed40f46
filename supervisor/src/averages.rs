//! Every `stats_period`: per-database averages for SHOW STATS, and the `log_stats` lines.

use crate::Supervisor;
use pgbouncers_worker::shm::{Kind, DB_COUNTERS};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Averages {
    last: Option<Instant>,
    /// Totals per database at the last period's end.
    prev: HashMap<usize, [u64; DB_COUNTERS]>,
}

impl Supervisor {
    pub(crate) fn averages_tick(&mut self) {
        let now = Instant::now();
        let period = self.cfg.stats_period;
        let Some(last) = self.averages.last else {
            self.averages.last = Some(now);
            return;
        };
        if now.duration_since(last) < period {
            return;
        }
        let secs = now.duration_since(last).as_secs_f64().max(0.001);
        self.averages.last = Some(now);
        let shm = &self.shm;
        for (kind, name, i) in shm.names() {
            if kind != Kind::Database {
                continue;
            }
            let mut t = shm.retired(i);
            for s in 0..shm.workers_cap() {
                for (k, v) in shm.db_stats(s, i).values().into_iter().enumerate() {
                    t[k] += v;
                }
            }
            let prev = self.averages.prev.insert(i, t).unwrap_or([0; DB_COUNTERS]);
            let d: [u64; DB_COUNTERS] = std::array::from_fn(|k| t[k].saturating_sub(prev[k]));
            let per_sec = |k: usize| (d[k] as f64 / secs) as u64;
            let per = |k: usize, by: usize| d[k].checked_div(d[by]).unwrap_or(0);
            // Order of DbStats: xact, query, recv, sent, xact_time, query_time, wait_time,
            // assignments, client parses, server parses, binds, logins. Times are per
            // transaction / query / assignment, as PgBouncer's; the rest per second.
            let avg = [
                per_sec(0),
                per_sec(1),
                per_sec(2),
                per_sec(3),
                per(4, 0),
                per(5, 1),
                per(6, 7),
                per_sec(7),
                per_sec(8),
                per_sec(9),
                per_sec(10),
                per_sec(11),
            ];
            shm.set_averages(i, avg);
            if self.cfg.log_stats {
                let name = pgbouncers_worker::logsafe::Escaped(&name);
                log::info!(
                    "[{name}] stats: {} xacts/s, {} queries/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                    avg[0], avg[1], avg[2], avg[3], avg[4], avg[5], avg[6]
                );
            }
        }
    }
}
