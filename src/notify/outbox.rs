//! The durable outbox: one JSON file per pending notification in
//! `<state.dir>/outbox/`, written atomically (temp file, fsync, rename,
//! fsync of the directory) before delivery starts and removed once the
//! receiver accepted it (or it failed for good). A restart loads what is
//! left and delivers it; receivers drop duplicates by `Idempotency-Key`.
//! Without a state dir the outbox lives in memory only.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::spec::Notification;
use crate::fsutil::write_atomically;

pub struct Outbox {
    dir: Option<PathBuf>,
    pending: BTreeMap<String, Notification>,
    max_pending: usize,
    /// Ids of notifications delivered or given up lately (newest last), so
    /// that a transition made again after a restart from a checkpoint is not
    /// sent again. Persisted in `done.log`; at most [`DONE_KEPT`].
    done: std::collections::VecDeque<String>,
    done_set: std::collections::HashSet<String>,
    done_log_lines: usize,
}

/// Finished notification ids remembered (and kept in `done.log`).
pub const DONE_KEPT: usize = 10_000;

/// What [`Outbox::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Queued,
    /// Already pending (same notifier and idempotency key).
    Duplicate,
    /// The outbox is full.
    Full,
}

impl Outbox {
    /// Opens the outbox in `dir` (created if missing), loading what a
    /// previous run left. Unreadable entries are moved aside
    /// (`*.corrupt`) with a warning, never deleted.
    pub fn open(dir: Option<&Path>, max_pending: usize) -> io::Result<Outbox> {
        let mut outbox = Outbox {
            dir: dir.map(Path::to_path_buf),
            pending: BTreeMap::new(),
            max_pending,
            done: Default::default(),
            done_set: Default::default(),
            done_log_lines: 0,
        };
        let Some(dir) = dir else { return Ok(outbox) };
        fs::create_dir_all(dir)?;
        // Waiting notifications are rendered requests: their headers carry
        // the notifiers' credentials. Only the daemon's user may read them.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        if let Ok(text) = fs::read_to_string(dir.join("done.log")) {
            for id in text.lines().filter(|l| !l.is_empty()) {
                outbox.remember_done(id);
                outbox.done_log_lines += 1;
            }
        }
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<Notification>(&bytes).ok()) {
                Some(notification) => {
                    outbox.pending.insert(notification.id.clone(), notification);
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable outbox entry moved aside");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        Ok(outbox)
    }

    /// Notifications pending, oldest first.
    pub fn pending(&self) -> Vec<Notification> {
        let mut all: Vec<Notification> = self.pending.values().cloned().collect();
        all.sort_by_key(|n| n.queued_at_ms);
        all
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues a notification durably.
    pub fn add(&mut self, notification: &Notification) -> io::Result<Added> {
        if self.pending.contains_key(&notification.id) || self.done_set.contains(&notification.id) {
            return Ok(Added::Duplicate);
        }
        if self.pending.len() >= self.max_pending {
            return Ok(Added::Full);
        }
        self.persist(notification)?;
        self.pending.insert(notification.id.clone(), notification.clone());
        Ok(Added::Queued)
    }

    /// Records a changed notification (its attempt count).
    pub fn update(&mut self, notification: &Notification) -> io::Result<()> {
        if self.pending.contains_key(&notification.id) {
            self.persist(notification)?;
            self.pending.insert(notification.id.clone(), notification.clone());
        }
        Ok(())
    }

    /// Removes a delivered (or abandoned) notification, remembering its id.
    pub fn remove(&mut self, id: &str) -> io::Result<()> {
        self.pending.remove(id);
        self.remember_done(id);
        if let Some(dir) = self.dir.clone() {
            self.log_done(&dir, id);
            match fs::remove_file(dir.join(format!("{id}.json"))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn remember_done(&mut self, id: &str) {
        if self.done_set.insert(id.to_string()) {
            self.done.push_back(id.to_string());
        }
        while self.done.len() > DONE_KEPT {
            if let Some(old) = self.done.pop_front() {
                self.done_set.remove(&old);
            }
        }
    }

    /// Appends `id` to `done.log`, rewriting it with the ids remembered
    /// when it has grown to twice that. Best effort: losing it only means a
    /// receiver may see an idempotency key again.
    fn log_done(&mut self, dir: &Path, id: &str) {
        let path = dir.join("done.log");
        let outcome = if self.done_log_lines >= 2 * DONE_KEPT {
            let mut text = String::new();
            for id in &self.done {
                text.push_str(id);
                text.push('\n');
            }
            self.done_log_lines = self.done.len();
            write_atomically(dir, "done.log", text.as_bytes())
        } else {
            self.done_log_lines += 1;
            fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{id}"))
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, path = %path.display(), "recording a finished notification failed");
        }
    }

    fn persist(&self, notification: &Notification) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            let bytes = serde_json::to_vec(notification).expect("a notification serialises");
            let written = write_atomically(dir, &format!("{}.json", notification.id), &bytes);
            let detail = written.as_ref().err().map(|e| format!("{}: {e}", dir.display())).unwrap_or_default();
            crate::telemetry::storage_status(crate::telemetry::Storage::Outbox, written.is_err(), &detail);
            written?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(alert: &str) -> Notification {
        let transition: crate::rules::Transition = serde_json::from_value(serde_json::json!({
            "alert": alert, "state": "firing", "fingerprint": format!("fp-{alert}"), "model": "m", "model_version": "",
            "segment": "", "feature": null, "window_start": "2026-11-26T10:00:00.000Z",
            "window_end": "2026-11-26T10:05:00.000Z", "value": 1.0, "labels": {}, "annotations": {},
            "notify": ["hook"], "active_since": "2026-11-26T10:00:00.000Z",
            "evaluation_time": "2026-11-26T10:05:00.000Z",
        }))
        .unwrap();
        Notification::new("hook", &transition, 0)
    }

    #[test]
    fn a_finished_notification_is_not_queued_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(Some(dir.path()), 10).unwrap();
        let sent = notification("A");
        assert_eq!(outbox.add(&sent).unwrap(), Added::Queued);
        assert_eq!(outbox.add(&sent).unwrap(), Added::Duplicate);
        outbox.remove(&sent.id).unwrap();
        drop(outbox);
        let mut reopened = Outbox::open(Some(dir.path()), 10).unwrap();
        assert!(reopened.is_empty());
        assert_eq!(reopened.add(&sent).unwrap(), Added::Duplicate, "made again after a restart: not sent twice");
        assert_eq!(reopened.add(&notification("B")).unwrap(), Added::Queued);
    }
}
