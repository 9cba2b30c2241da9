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

/// Default most notifications pending at once; beyond it new ones are
/// refused (counted as `dropped`) rather than growing without bound.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

pub struct Outbox {
    dir: Option<PathBuf>,
    pending: BTreeMap<String, Notification>,
    max_pending: usize,
}

/// What [`Outbox::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Queued,
    /// Already pending (same notifier and idempotency key).
    Duplicate,
    /// The outbox is full.
    Full,
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

impl Outbox {
    /// Opens the outbox in `dir` (created if missing), loading what a
    /// previous run left. Unreadable entries are moved aside
    /// (`*.corrupt`) with a warning, never deleted.
    pub fn open(dir: Option<&Path>, max_pending: usize) -> io::Result<Outbox> {
        let mut outbox = Outbox { dir: dir.map(Path::to_path_buf), pending: BTreeMap::new(), max_pending };
        let Some(dir) = dir else { return Ok(outbox) };
        fs::create_dir_all(dir)?;
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
        if self.pending.contains_key(&notification.id) {
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

    /// Removes a delivered (or abandoned) notification.
    pub fn remove(&mut self, id: &str) -> io::Result<()> {
        self.pending.remove(id);
        if let Some(dir) = &self.dir {
            match fs::remove_file(dir.join(format!("{id}.json"))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn persist(&self, notification: &Notification) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            let bytes = serde_json::to_vec(notification).expect("a notification serialises");
            write_atomically(dir, &format!("{}.json", notification.id), &bytes)?;
        }
        Ok(())
    }
}
