//! Files on disk: private folders, atomic writes (a temporary file in the same folder, synced,
//! then renamed), so that a killed process never leaves a partial file under a final name.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Prefix and suffix of temporary files; leftovers of a killed process are removed by
/// [`remove_stale_parts`].
const PART_PREFIX: &str = ".crm-jobs-";
const PART_SUFFIX: &str = ".part";

/// Creates a folder (and its parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes a file readable by the owner only.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Reads a text file of at most `limit` bytes. A larger one, or a device that never ends
/// (`/dev/zero`), is an error saying so, after reading `limit` bytes and no more.
pub fn read_text_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {} kB", limit / 1024),
        ));
    }
    String::from_utf8(buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// The longest line of an input read by lines (a CSV row, a JSON line): 1 MB. A file of one
/// endless line (`/dev/zero`) stops there instead of growing the process.
pub const MAX_LINE: usize = 1024 * 1024;

/// Why a line of a [`BoundedLines`] could not be read.
#[derive(Debug)]
pub enum LineError {
    /// Line N is longer than [`MAX_LINE`] (no more than that of it was read).
    TooLong(u64),
    /// Line N is not UTF-8 text.
    NotUtf8(u64),
    /// The file could not be read.
    Io(std::io::Error),
}

impl LineError {
    /// `FILE:LINE: why` (`FILE: why` for a read error), for an input of `kind` (e.g. `a file of
    /// JSON lines`) of which nothing was `done` (e.g. `imported`).
    pub fn describe(&self, file: &str, kind: &str, done: &str) -> String {
        match self {
            LineError::TooLong(n) => format!(
                "{file}:{n}: the line is longer than {} MB: it is not {kind}; nothing was {done}",
                MAX_LINE / (1024 * 1024)
            ),
            LineError::NotUtf8(n) => {
                format!("{file}:{n}: the line is not UTF-8 text; nothing was {done}")
            }
            LineError::Io(e) => format!("cannot read `{file}`: {e}; nothing was {done}"),
        }
    }
}

impl From<std::io::Error> for LineError {
    fn from(e: std::io::Error) -> LineError {
        LineError::Io(e)
    }
}

/// The lines of a text as they come, each at most [`MAX_LINE`] bytes: a longer line is an
/// error once that much of it was read, so that no line is ever held whole beyond the limit.
/// `\n` ends a line and a `\r` before it is dropped, as `str::lines` does.
pub struct BoundedLines<R> {
    reader: R,
    /// The number of the next line.
    line: u64,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> BoundedLines<R> {
    pub fn new(reader: R) -> BoundedLines<R> {
        BoundedLines {
            reader,
            line: 1,
            buf: Vec::new(),
        }
    }

    /// The next line, with its number, or `None` at the end of the text.
    pub fn next_line(&mut self) -> Result<Option<(u64, &str)>, LineError> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        let line = self.line;
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if n > MAX_LINE {
            return Err(LineError::TooLong(line));
        }
        match std::str::from_utf8(&self.buf) {
            Ok(text) => Ok(Some((line, text))),
            Err(_) => Err(LineError::NotUtf8(line)),
        }
    }

    /// Skips the blank text at the start (whitespace and empty lines, counted) and tells the
    /// first byte after it, without taking it; `None` for a text of nothing else.
    pub fn first_byte(&mut self) -> Result<Option<u8>, LineError> {
        let mut on_line = 0usize;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let blank = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let first = buf.get(blank).copied();
            for &b in &buf[..blank] {
                if b == b'\n' {
                    self.line += 1;
                    on_line = 0;
                } else {
                    on_line += 1;
                }
            }
            self.reader.consume(blank);
            if on_line > MAX_LINE {
                return Err(LineError::TooLong(self.line));
            }
            if first.is_some() {
                return Ok(first);
            }
        }
    }

    /// The reader, from where the lines stopped.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

/// Writes `bytes` to `dir/name` atomically, private to the owner. Returns the final path.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    write_atomic_with(dir, name, |w| Ok(w.write_all(bytes)?))
}

/// Writes what `fill` writes to `dir/name` atomically (through a buffer into a temporary file,
/// synced, then renamed), private to the owner: a file of any size is streamed, never held in
/// memory. When `fill` fails, nothing is left under the name (a file already there is kept as
/// it was). Returns the final path.
pub fn write_atomic_with(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<PathBuf> {
    create_private_dir(dir).with_context(|| format!("cannot create folder `{}`", dir.display()))?;
    let target = dir.join(name);
    // Never rename over a device, a pipe or a folder (as root, `/dev/null` would become a file).
    if let Ok(meta) = fs::symlink_metadata(&target)
        && !meta.file_type().is_file()
        && !meta.file_type().is_symlink()
    {
        anyhow::bail!(
            "`{}` exists and is not a regular file: choose a file name",
            target.display()
        );
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(PART_PREFIX)
        .suffix(PART_SUFFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
    let cannot = || {
        format!(
            "cannot write `{}` (is the disk full?); nothing was saved under that name",
            target.display()
        )
    };
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        fill(&mut w).with_context(cannot)?;
        w.flush().with_context(cannot)?;
    }
    tmp.as_file().sync_all().with_context(cannot)?;
    tmp.persist(&target)
        .with_context(|| format!("cannot move the new file into `{}`", target.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        d.sync_all().ok();
    }
    Ok(target)
}

/// Writes an `--out` file chosen by an operator: atomically (a temporary file renamed into
/// place) for a file, straight into it for a device or a pipe (`/dev/stdout`, a FIFO), which a
/// rename would replace.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output_with(path, |w| Ok(w.write_all(bytes)?))
}

/// [`write_output`] for output streamed by `fill` (an export of any size).
pub fn write_output_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    if path.exists() && !path.is_file() && !path.is_dir() {
        let cannot = || format!("cannot write `{}`", path.display());
        let file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(cannot)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        fill(&mut w).with_context(cannot)?;
        return w.flush().with_context(cannot);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("`--out` needs a file name")?
        .to_string_lossy();
    write_atomic_with(dir, &name, fill)?;
    Ok(())
}

/// Removes temporary files left in `dir` (recursively) by a killed process. Returns how many.
pub fn remove_stale_parts(dir: &Path) -> usize {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            removed += remove_stale_parts(&path);
        } else if name.starts_with(PART_PREFIX)
            && name.ends_with(PART_SUFFIX)
            && fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// The longest folder name [`bounded_component`] makes, in bytes: far below the 255-byte limit
/// of common file systems, as for the boleto names.
pub const MAX_COMPONENT_BYTES: usize = 120;

/// [`safe_component`] at most [`MAX_COMPONENT_BYTES`] long, and still one name per text: a
/// longer one keeps its first part and ends with `_` and 12 hex digits of the SHA-256 of the
/// text as given, so that two long names alike in their first 100 characters get folders of
/// their own, the same on every run.
pub fn bounded_component(raw: &str) -> String {
    use sha2::{Digest, Sha256};
    let safe = safe_component(raw);
    if safe.len() <= MAX_COMPONENT_BYTES {
        return safe;
    }
    let digest = hex::encode(Sha256::digest(raw.as_bytes()));
    let mut end = MAX_COMPONENT_BYTES - 13;
    while !safe.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}_{}", &safe[..end], &digest[..12])
}

/// Whether an error is the file system refusing a name (`File name too long`, an invalid
/// name): trying again cannot help, so it is permanent.
pub fn is_name_refused(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            e.kind() == std::io::ErrorKind::InvalidFilename
                || matches!(
                    rustix::io::Errno::from_io_error(e),
                    Some(rustix::io::Errno::NAMETOOLONG | rustix::io::Errno::ILSEQ)
                )
        })
}

/// A name safe as one path component: letters, digits, `-`, `_` and `.` kept, anything else
/// becomes `_`; never empty, never `.` or `..`.
pub fn safe_component(raw: &str) -> String {
    let mut out: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export that fails half-way (a store error, a full disk) leaves the file that was
    /// there as it was, and no temporary file beside it.
    #[test]
    fn a_streamed_write_that_fails_leaves_the_old_file_and_no_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invoices.csv");
        write_output(&path, b"old\n").unwrap();
        let err = write_output_with(&path, |w| {
            w.write_all(&[b'x'; 200_000])?;
            anyhow::bail!("the store failed at row 1000")
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("the store failed at row 1000"),
            "{err:#}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        write_output_with(&path, |w| Ok(w.write_all(b"new\n")?)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new\n");
    }

    #[test]
    fn an_atomic_write_never_replaces_what_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("taken")).unwrap();
        let e = write_atomic(dir.path(), "taken", b"x").unwrap_err();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
        assert!(dir.path().join("taken").is_dir());
        write_atomic(dir.path(), "new.txt", b"x").unwrap();
        write_atomic(dir.path(), "new.txt", b"y").unwrap();
        assert_eq!(fs::read(dir.path().join("new.txt")).unwrap(), b"y");
    }

    #[test]
    fn safe_component_cannot_escape() {
        let escaped = safe_component("../../etc/passwd");
        assert!(
            !escaped.contains('/') && !escaped.starts_with('.'),
            "{escaped}"
        );
        assert_eq!(safe_component(".."), "_.");
        assert_eq!(safe_component(""), "_");
        assert_eq!(safe_component("OS-12345"), "OS-12345");
        assert_eq!(safe_component("a/b"), "a_b");
    }

    #[test]
    fn long_names_are_cut_and_stay_unique() {
        let a = format!("{}A", "7".repeat(299));
        let b = format!("{}B", "7".repeat(299));
        let (ca, cb) = (bounded_component(&a), bounded_component(&b));
        assert_eq!(ca.len(), MAX_COMPONENT_BYTES);
        assert_ne!(ca, cb);
        assert!(ca.starts_with(&"7".repeat(107)), "{ca}");
        assert_eq!(ca, bounded_component(&a), "the same on every run");
        let accents = "Ç".repeat(100);
        assert!(bounded_component(&accents).len() <= MAX_COMPONENT_BYTES);
        assert_eq!(bounded_component("OS-12345"), "OS-12345");
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomic(&dir.path().join("x".repeat(300)), "f.pdf", b"%PDF-").unwrap_err();
        assert!(is_name_refused(&e), "{e:#}");
        write_atomic(&dir.path().join(&ca), "f.pdf", b"%PDF-").unwrap();
        // Another failure (a file where a folder should be) is not about the name.
        fs::write(dir.path().join("file"), b"").unwrap();
        let e = write_atomic(&dir.path().join("file"), "f.pdf", b"%PDF-").unwrap_err();
        assert!(!is_name_refused(&e), "{e:#}");
    }

    #[test]
    fn atomic_write_leaves_no_part() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_atomic(dir.path(), "x.pdf", b"%PDF-1.4").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"%PDF-1.4");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    fn all(text: &[u8]) -> Vec<Result<(u64, String), String>> {
        let mut lines = BoundedLines::new(text);
        let mut out = Vec::new();
        loop {
            match lines.next_line() {
                Ok(Some((n, l))) => out.push(Ok((n, l.to_string()))),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.describe("f", "lines", "done")));
                    return out;
                }
            }
        }
    }

    #[test]
    fn lines_are_split_as_str_lines_splits_them() {
        let text = "a\r\n\nb\rc\nd";
        let got: Vec<(u64, String)> = all(text.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let want: Vec<(u64, String)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_line_over_the_limit_stops_after_the_limit() {
        let mut text = b"{}\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE));
        text.extend(b"\n{}\n");
        // A line of exactly the limit is read.
        assert_eq!(all(&text).len(), 3);
        text.insert(5, b'x');
        assert_eq!(
            all(&text).last().unwrap(),
            &Err("f:2: the line is longer than 1 MB: it is not lines; nothing was done".into())
        );
        // A reader that never ends (`/dev/zero`).
        let mut lines = BoundedLines::new(std::io::BufReader::new(std::io::repeat(0)));
        assert!(matches!(lines.next_line(), Err(LineError::TooLong(1))));
        assert!(matches!(
            BoundedLines::new(&b"a\n\xff\n"[..]).next_line(),
            Ok(Some((1, "a")))
        ));
        assert_eq!(
            all(b"a\n\xff\n").last().unwrap(),
            &Err("f:2: the line is not UTF-8 text; nothing was done".into())
        );
    }

    #[test]
    fn the_first_byte_after_blank_lines_keeps_the_line_count() {
        let mut lines = BoundedLines::new(&b"\n  \r\n  [1]\n"[..]);
        assert_eq!(lines.first_byte().unwrap(), Some(b'['));
        assert!(matches!(lines.next_line(), Ok(Some((3, "[1]")))));
        assert_eq!(BoundedLines::new(&b" \n\t"[..]).first_byte().unwrap(), None);
        let mut spaces = BoundedLines::new(std::io::BufReader::new(std::io::repeat(b' ')));
        assert!(matches!(spaces.first_byte(), Err(LineError::TooLong(1))));
    }
}
