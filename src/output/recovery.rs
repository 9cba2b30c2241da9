//! Recovering append-only files after a crash. A checkpoint records each
//! file's length; what the file gained after it was written by events the
//! restarted daemon will process again. [`recover_tail`] cuts a torn last
//! line (a crash mid-write) and returns the identities of the complete
//! records past the checkpoint, so the writer skips them instead of writing
//! them twice. Files are never rewritten otherwise. The tail is read a line
//! at a time, so recovering a long tail takes bounded memory.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
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

/// The longest record [`recover_tail`] recognises, in bytes. Our records
/// are far shorter; a longer line is skipped unread (logged), so the tail is
/// read in bounded memory however long it, or any line in it, is.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// Keys (by `key`) of the NDJSON records `path` has past byte `length`;
/// a last line without its newline is cut off (logged). The tail is read
/// line by line: memory holds one line of at most [`MAX_RECORD_BYTES`]
/// and the keys.
pub fn recover_tail(path: &Path, length: u64, key: impl Fn(&Value) -> Option<String>) -> io::Result<HashSet<String>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
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
    let mut reader = BufReader::with_capacity(64 * 1024, &file);
    reader.seek(SeekFrom::Start(length))?;
    let mut keys = HashSet::new();
    let mut line: Vec<u8> = Vec::new();
    // Whether the line being read is longer than MAX_RECORD_BYTES (then
    // `line` stays empty and the rest of it is skipped).
    let mut too_long = false;
    let (mut position, mut complete) = (length, length);
    let mut skipped = 0u64;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buffer.is_empty() {
            break;
        }
        let newline = buffer.iter().position(|b| *b == b'\n');
        let piece = &buffer[..newline.unwrap_or(buffer.len())];
        if !too_long {
            if line.len() + piece.len() > MAX_RECORD_BYTES {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(piece);
            }
        }
        let consumed = piece.len() + usize::from(newline.is_some());
        reader.consume(consumed);
        position += consumed as u64;
        if newline.is_some() {
            complete = position;
            if too_long {
                skipped += 1;
            } else if !line.is_empty()
                && let Some(k) = serde_json::from_slice::<Value>(&line).ok().as_ref().and_then(&key)
            {
                keys.insert(k);
            }
            line.clear();
            too_long = false;
        }
    }
    if skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            lines = skipped,
            limit = MAX_RECORD_BYTES,
            "lines past the checkpoint longer than any record were skipped, not recognised"
        );
    }
    drop(reader);
    if complete < position {
        tracing::warn!(
            path = %path.display(),
            bytes = position - complete,
            "cutting a torn last line (the previous run stopped mid-write)"
        );
        file.set_len(complete)?;
        file.sync_all()?;
    }
    Ok(keys)
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

    #[test]
    fn the_tail_is_read_a_line_at_a_time_and_overlong_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let before = "{\"k\":\"a\"}\n";
        // Records longer than the read buffer, one line longer than any
        // record may be (valid JSON, but never read whole), then a torn line.
        let record = |k: &str, pad: usize| format!("{{\"k\":\"{k}\",\"pad\":\"{}\"}}\n", "p".repeat(pad));
        let huge = record("huge", MAX_RECORD_BYTES);
        let text =
            format!("{before}{}{}{huge}{}{{\"k\":\"torn", record("b", 100_000), record("c", 3), record("d", 70_000));
        std::fs::write(&path, &text).unwrap();
        let keys = recover_tail(&path, before.len() as u64, |v| v["k"].as_str().map(str::to_string)).unwrap();
        assert_eq!(keys, HashSet::from(["b".to_string(), "c".to_string(), "d".to_string()]));
        let torn = "{\"k\":\"torn".len() as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64 - torn);
        // A torn line longer than any record is cut too.
        std::fs::write(&path, format!("{before}{}", &huge[..huge.len() - 1])).unwrap();
        assert!(recover_tail(&path, before.len() as u64, |_| Some(String::new())).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }
}
