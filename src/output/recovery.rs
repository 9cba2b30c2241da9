//! Recovering append-only files after a crash. A checkpoint records each
//! file's length; what the file gained after it was written by events the
//! restarted daemon will process again. [`recover_tail`] cuts a torn last
//! line (a crash mid-write) and returns the identities of the complete
//! records past the checkpoint, so the writer skips them instead of writing
//! them twice. Files are never rewritten otherwise.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

/// An output file in a checkpoint: its length then, and the records that
/// were already in the file before that length but which the state has yet
/// to produce again (written ahead by a run that crashed, not yet met
/// again when the checkpoint was taken).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputPosition {
    pub length: u64,
    pub written_ahead: Vec<String>,
}

/// The records to skip after restarting from `position`: those written
/// ahead of the checkpoint and those past its length.
pub fn records_to_skip(
    path: &Path,
    position: &OutputPosition,
    key: impl Fn(&Value) -> Option<String>,
) -> io::Result<HashSet<String>> {
    let mut skip = recover_tail(path, position.length, key)?;
    skip.extend(position.written_ahead.iter().cloned());
    Ok(skip)
}

/// Keys (by `key`) of the NDJSON records `path` has past byte `length`;
/// a last line without its newline is cut off (logged).
pub fn recover_tail(path: &Path, length: u64, key: impl Fn(&Value) -> Option<String>) -> io::Result<HashSet<String>> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size < length {
        tracing::warn!(
            path = %path.display(),
            size,
            checkpoint_length = length,
            "the file is shorter than at the checkpoint (truncated or replaced?); appending as is"
        );
        return Ok(HashSet::new());
    }
    file.seek(SeekFrom::Start(length))?;
    let mut tail = Vec::with_capacity((size - length) as usize);
    file.read_to_end(&mut tail)?;
    let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = tail.len() - complete,
            "cutting a torn last line (the previous run stopped mid-write)"
        );
        file.set_len(length + complete as u64)?;
        file.sync_all()?;
    }
    Ok(tail[..complete]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|record| key(&record))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_past_the_checkpoint_and_a_torn_line_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let before = "{\"k\":\"a\"}\n";
        std::fs::write(&path, format!("{before}{{\"k\":\"b\"}}\n{{\"k\":\"c\"}}\n{{\"k\":\"d")).unwrap();
        let keys = recover_tail(&path, before.len() as u64, |v| v["k"].as_str().map(str::to_string)).unwrap();
        assert_eq!(keys, HashSet::from(["b".to_string(), "c".to_string()]));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{before}{{\"k\":\"b\"}}\n{{\"k\":\"c\"}}\n"));
        // Nothing past the checkpoint, or no file: nothing to skip.
        let end = std::fs::metadata(&path).unwrap().len();
        assert!(recover_tail(&path, end, |_| Some(String::new())).unwrap().is_empty());
        assert!(recover_tail(&dir.path().join("none"), 0, |_| Some(String::new())).unwrap().is_empty());
    }
}
