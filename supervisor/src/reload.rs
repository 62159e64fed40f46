//! SIGHUP and RELOAD: re-read and validate the config and auth files, then apply them
//! everywhere.

use crate::children::Slot;
use crate::{listen, read_hba, read_userlist, Supervisor, WORKERS_CAP};
use pgbouncers_worker::config::{restart_required_changes, Config};
use pgbouncers_worker::control::{snapshot_to_memfd, Command, Snapshot};
use std::os::fd::AsRawFd;
use std::sync::Arc;

impl Supervisor {
    /// SIGHUP: an invalid file is logged and changes nothing; a valid one reaches every
    /// worker without dropping a connection, and `workers` changes fork or retire workers.
    pub(crate) fn reload(&mut self) {
        if let Err(e) = self.reload_now() {
            log::error!("reload failed, keeping the running configuration: {e}");
        }
    }

    pub(crate) fn reload_now(&mut self) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("the pooler is shutting down".into());
        }
        // Before anything is logged: after a log rotation, this reload's lines go to the new file.
        pgbouncers_worker::logfile::reopen();
        let path = self.opts.config_path.clone();
        log::info!("reloading {}", path.display());
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let result = (|| {
            // The start-up rules, size limit included: an empty or half-written file is
            // refused here and the running configuration stays.
            let (text, cfg) = Config::read_file(&path).map_err(|e| e.to_string())?;
            let userlist = read_userlist(&cfg)?;
            let hba = read_hba(&cfg)?;
            for key in restart_required_changes(&self.cfg, &cfg) {
                log::warn!("{key} changed: it takes effect only after a restart");
            }
            self.apply(text, cfg, userlist, hba)
        })();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        if result.is_ok() {
            log::info!("configuration reloaded");
        }
        result
    }

    /// Makes a validated configuration the running one, in every worker.
    pub(crate) fn apply(
        &mut self,
        text: String,
        cfg: Config,
        userlist: Option<String>,
        hba: Option<String>,
    ) -> Result<(), String> {
        crate::check_tls(&cfg)?;
        let want = self
            .opts
            .workers
            .unwrap_or_else(|| cfg.worker_count())
            .clamp(1, WORKERS_CAP);
        let snapshot = Snapshot {
            config_yaml: text.clone(),
            userlist: userlist.clone(),
            hba: hba.clone(),
        };
        let memfd = snapshot_to_memfd(&snapshot)
            .map_err(|e| format!("cannot pass the configuration to workers: {e}"))?;
        if want != self.want {
            // Sockets for new slots are bound with the addresses the workers already use.
            self.resize(want)?;
        }
        let old_metrics = self.cfg.metrics_addr;
        pgbouncers_worker::logfile::follow(cfg.logfile.as_deref());
        self.cfg = Arc::new(cfg);
        self.config_text = text;
        self.userlist = userlist;
        self.hba = hba;
        self.metrics_rebind(old_metrics);
        for n in 0..self.slots.len() {
            if !self.slots[n].retiring {
                self.send(n, &Command::Reload, Some(memfd.as_raw_fd()));
            }
        }
        Ok(())
    }

    /// Grows or shrinks the set of workers.
    fn resize(&mut self, want: usize) -> Result<(), String> {
        let have = self.want;
        if want > have {
            let addrs = listen::addresses(&self.cfg).map_err(|e| e.to_string())?;
            for n in have..want {
                if n < self.slots.len() {
                    // A slot still retiring from an earlier shrink: keep it after all.
                    self.slots[n].retiring = false;
                    if self.slots[n].pid.is_none() {
                        self.slots[n].respawn_at = Some(std::time::Instant::now());
                    }
                    continue;
                }
                let socks = listen::bind_slot(&addrs).map_err(|e| e.to_string())?;
                self.listeners.tcp.push(socks);
                self.slots.push(Slot::new());
            }
            log::info!("workers: {have} -> {want}");
        } else {
            for n in want..have {
                self.slots[n].retiring = true;
                self.send(n, &pgbouncers_worker::control::Command::Shutdown, None);
            }
            log::info!("workers: {have} -> {want}; retiring the surplus gracefully");
        }
        self.want = want;
        Ok(())
    }
}
