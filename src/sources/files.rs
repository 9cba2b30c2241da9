//! File sources for `replay`: NDJSON (one event per line) and Parquet (rows
//! re-encoded as JSON lines with arrow-json, so one decoder and one set of
//! field pointers serve both), chosen by extension.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// Errors opening or reading an input file, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a readable Parquet file: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: unsupported extension (use .ndjson, .jsonl, .json or .parquet)")]
    UnknownFormat { path: PathBuf },
}

enum Reader {
    Ndjson(BufReader<File>),
    Parquet { batches: ParquetRecordBatchReader, lines: Vec<u8>, at: usize },
}

/// Reads the events of a list of files, one line at a time, in order.
pub struct LineSource {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<(PathBuf, Reader)>,
    line_number: u64,
}

/// Where an event came from, for error messages.
#[derive(Debug, Clone)]
pub struct LineLocation<'a> {
    pub path: &'a Path,
    pub line: u64,
}

impl std::fmt::Display for LineLocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

fn open(path: &Path) -> Result<Reader, FileSourceError> {
    let io_error = |source| FileSourceError::Io { path: path.to_path_buf(), source };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "ndjson" | "jsonl" | "json" => {
            Ok(Reader::Ndjson(BufReader::with_capacity(1 << 20, File::open(path).map_err(io_error)?)))
        }
        "parquet" => {
            let file = File::open(path).map_err(io_error)?;
            let parquet_error = |e: datafusion::parquet::errors::ParquetError| FileSourceError::Parquet {
                path: path.to_path_buf(),
                message: e.to_string(),
            };
            let batches = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(parquet_error)?
                .with_batch_size(8192)
                .build()
                .map_err(parquet_error)?;
            Ok(Reader::Parquet { batches, lines: Vec::new(), at: 0 })
        }
        _ => Err(FileSourceError::UnknownFormat { path: path.to_path_buf() }),
    }
}

fn batch_to_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut writer = arrow_json::LineDelimitedWriter::new(&mut *out);
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

impl LineSource {
    /// Checks that every file opens before anything is read.
    pub fn new(files: &[PathBuf]) -> Result<LineSource, FileSourceError> {
        for path in files {
            open(path)?;
        }
        Ok(LineSource { files: files.to_vec(), next_file: 0, current: None, line_number: 0 })
    }

    /// The index (in the list given to [`Self::new`]) of the file of the
    /// line last returned; 0 before the first line.
    pub fn file_index(&self) -> usize {
        self.next_file.saturating_sub(1)
    }

    /// The location of the line last returned.
    pub fn location(&self) -> LineLocation<'_> {
        let path = self.current.as_ref().map(|(p, _)| p.as_path()).unwrap_or(Path::new("-"));
        LineLocation { path, line: self.line_number }
    }

    /// Puts the next non-empty line into `line` (without its newline);
    /// `false` at the end of the last file.
    pub fn next_line(&mut self, line: &mut Vec<u8>) -> Result<bool, FileSourceError> {
        loop {
            if self.current.is_none() {
                if self.next_file == self.files.len() {
                    return Ok(false);
                }
                let path = self.files[self.next_file].clone();
                self.next_file += 1;
                self.current = Some((path.clone(), open(&path)?));
                self.line_number = 0;
            }
            let (path, reader) = self.current.as_mut().expect("just set");
            line.clear();
            let got = match reader {
                Reader::Ndjson(r) => {
                    r.read_until(b'\n', line).map_err(|source| FileSourceError::Io { path: path.clone(), source })? > 0
                }
                Reader::Parquet { batches, lines, at } => loop {
                    if *at < lines.len() {
                        let end = lines[*at..].iter().position(|&b| b == b'\n').map_or(lines.len(), |p| *at + p + 1);
                        line.extend_from_slice(&lines[*at..end]);
                        *at = end;
                        break true;
                    }
                    match batches.next() {
                        None => break false,
                        Some(Err(e)) => {
                            return Err(FileSourceError::Parquet { path: path.clone(), message: e.to_string() });
                        }
                        Some(Ok(batch)) => {
                            batch_to_json_lines(&batch, lines)
                                .map_err(|message| FileSourceError::Parquet { path: path.clone(), message })?;
                            *at = 0;
                        }
                    }
                },
            };
            if !got {
                self.current = None;
                continue;
            }
            self.line_number += 1;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(true);
        }
    }
}
