//! De-duplication in bounded memory: rows are gathered into sorted runs, each run that
//! outgrows its budget is written to a temporary file, and the runs are merged back in key
//! order, one row per key.
//!
//! This is how the `preferences` reader keeps memory flat in the file's size: it holds no
//! per-row set of the ids it has seen, only one run per table, and the rows it hands on come
//! out in key order, so the stored rows are the same whatever the chunking and the order of
//! the input rows.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Mutex, Once};

use crate::store::records::{ItemRow, PairRow, PromptRow};

/// A row that can go through a run file (sorted and written on a thread of its own).
pub trait Record: Sized + Send + 'static {
    /// Writes the row in the run file encoding, its key first (as [`put_str`] writes it: a
    /// run is sorted and de-duplicated by the keys read back from its rows' encodings; two
    /// rows with the same key are equal).
    fn encode(&self, w: &mut impl Write) -> io::Result<()>;
    /// The row whose run encoding is `raw` (one row, as [`read_raw`] gives it).
    ///
    /// # Errors
    /// An `InvalidData` error when `raw` is not a whole row of this encoding.
    fn decode(raw: &[u8]) -> io::Result<Self>;
    /// The row's fields as [`Record::encode`] writes them, in order: how a merge finds where
    /// an encoded row ends without decoding it (see [`read_raw`]).
    const FIELDS: &'static [Field];
}

/// One field of a row's run encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A length-prefixed value ([`put_bytes`]): 4 bytes of length (little-endian; `u32::MAX`
    /// for the absent marker), then that many bytes.
    Value,
    /// A value of this many bytes (a label, a weight).
    Fixed(usize),
}

/// Runs merged at once at most: every `MAX_RUNS` runs of one level are merged into one run
/// of the next level, so each row is rewritten once per level (log base 64 of the runs).
const MAX_RUNS: usize = 64;
/// Read and write buffer per run file.
const RUN_BUFFER: usize = 256 << 10;

/// A folder for run files: a new one with an unpredictable name under the system's
/// temporary folder (`TMPDIR`), readable by its owner only, never one that existed before;
/// removed with its contents when dropped, and on SIGINT/SIGTERM (see [`on_signal`]).
pub struct SpillDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// The spill folders alive in this process, for the signal handler to remove.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
/// Set first thing by the signal handler: the process is about to exit with 130.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Called where a spill folder's file fails: while a signal is being handled, the failure is
/// the handler's doing (it moved the folder aside), not the ingest's, so this thread waits
/// for the handler to exit the process with 130 instead of ending it with an error first.
pub fn wait_if_stopping() {
    if STOPPING.load(AtomicOrdering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// On SIGINT or SIGTERM: removes the live spill folders and exits with status 130. Set up
/// with the first spill folder, once per process. Only an ingest makes spill folders and
/// `palpipe serve` sets its own handler; they never run in one process (were a handler set
/// already, this one is not set and the folders are left to the next reboot's cleanup).
fn on_signal() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            STOPPING.store(true, AtomicOrdering::SeqCst);
            let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            for path in live {
                // A thread may be writing run files meanwhile: move the folder aside first, so
                // that new files under its old name fail instead of landing in it, then remove
                // it, trying again briefly for a file that was being created as it moved.
                let mut aside = path.clone().into_os_string();
                aside.push(".removing");
                let target = match std::fs::rename(&path, &aside) {
                    Ok(()) => PathBuf::from(aside),
                    Err(_) => path,
                };
                for _ in 0..50 {
                    if std::fs::remove_dir_all(&target).is_ok() || !target.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            crate::pipeline::progress::to_stderr(format_args!("palpipe: stopped by a signal"));
            std::process::exit(130);
        });
    });
}

impl SpillDir {
    /// A new folder under `TMPDIR`.
    pub fn new() -> io::Result<SpillDir> {
        on_signal();
        let dir = tempfile::Builder::new()
            .prefix("palpipe-spill-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(std::env::temp_dir())?;
        let path = dir.path().to_path_buf();
        if let Ok(mut live) = LIVE.lock() {
            live.push(path.clone());
        }
        Ok(SpillDir {
            dir: Some(dir),
            path,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| p != &self.path);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Row encodings of one table, back to back, and where each begins and ends: a block of
/// rows encoded where they were read (a parsing thread, see `Rows` in the reader), or the
/// rows a run was given one at a time. A run in memory is a list of these, taken as they
/// are: rows are encoded once, where they are made, and never copied on their way to a
/// run file.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

/// What [`Encoded::push_with`] says of an encoding that does not begin with a key.
const NO_KEY: &str = "a row's encoding does not begin with its key";

/// One row of an [`Encoded`]: its key's [`prefix`] (read once), and where its encoding
/// begins and ends.
#[derive(Debug, Clone, Copy)]
struct Span {
    prefix: u64,
    start: usize,
    end: usize,
}

impl Encoded {
    /// Appends one row, encoded by `encode` (which writes the row's fields, its key first, as
    /// [`Record::encode`] does).
    ///
    /// # Errors
    /// `encode`'s error (a value over 4 GiB), or an `InvalidData` error when what it wrote
    /// does not begin with a key; nothing is appended then.
    pub fn push_with(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let start = self.bytes.len();
        let written = encode(&mut self.bytes).and_then(|()| {
            encoded_key(&self.bytes, start)
                .map(prefix)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, NO_KEY))
        });
        match written {
            Ok(prefix) => {
                let end = self.bytes.len();
                self.spans.push(Span { prefix, start, end });
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends `row`'s encoding.
    ///
    /// # Errors
    /// As [`Encoded::push_with`].
    pub fn push<T: Record>(&mut self, row: &T) -> io::Result<()> {
        self.push_with(|w| row.encode(w))
    }

    /// An empty list with room for `bytes` bytes of encodings and `rows` rows.
    pub fn with_capacity(bytes: usize, rows: usize) -> Encoded {
        Encoded {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(rows),
        }
    }

    /// Bytes of encodings held (not the room for them).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// No row held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of memory held: the room taken for the encodings and their spans (filled or
    /// not), and the block itself.
    pub fn size(&self) -> usize {
        self.bytes.capacity()
            + self.spans.capacity() * std::mem::size_of::<Span>()
            + std::mem::size_of::<Encoded>()
    }

    /// The `i`th row's encoding.
    fn row(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.bytes[s.start..s.end]
    }

    /// The `i`th row's key.
    fn key(&self, i: usize) -> &[u8] {
        encoded_key(&self.bytes, self.spans[i].start).unwrap_or_default()
    }
}

/// A row of a run in memory: its block and its place in the block.
type At = (u32, u32);

/// A run in memory, sorted: its blocks, and its rows' places in key order (the first row of
/// each key only, when de-duplicating).
#[derive(Default)]
struct Sorted {
    blocks: Vec<Encoded>,
    /// (key prefix, place) per row kept.
    order: Vec<(u64, At)>,
}

impl Sorted {
    /// Sorts `blocks`' rows by key, the rows of one key in the order they came (one per key
    /// when `dedup`: the rows of one key are equal); also gives how many rows it left out
    /// as repeated.
    fn new(blocks: Vec<Encoded>, dedup: bool) -> (Sorted, usize) {
        // (key prefix, block, row) triples are sorted (16 bytes each), most comparisons told
        // by the prefix alone; between equal keys the place decides, so rows of one key keep
        // the order they came in. A run holds fewer than `MAX_RUN_ROWS` rows (see
        // `Runs::push_block`), so places fit in u32.
        let mut order: Vec<(u64, At)> = Vec::with_capacity(blocks.iter().map(Encoded::len).sum());
        for (b, block) in blocks.iter().enumerate() {
            for (i, span) in block.spans.iter().enumerate() {
                order.push((span.prefix, (b as u32, i as u32)));
            }
        }
        let key = |(b, i): At| blocks[b as usize].key(i as usize);
        order.sort_unstable_by(|x, y| {
            (x.0.cmp(&y.0))
                .then_with(|| key(x.1).cmp(key(y.1)))
                .then(x.1.cmp(&y.1))
        });
        let total = order.len();
        if dedup {
            // Keys whose prefixes differ differ: most rows need no look at their key.
            order.dedup_by(|next, kept| next.0 == kept.0 && key(next.1) == key(kept.1));
        }
        let repeated = total - order.len();
        (Sorted { blocks, order }, repeated)
    }

    /// The encoding of the row at `at`.
    fn row(&self, (b, i): At) -> &[u8] {
        self.blocks[b as usize].row(i as usize)
    }
}

/// The rows of one table: a run in memory plus the run files written so far.
pub struct Runs<T> {
    name: &'static str,
    budget: usize,
    /// One row per key (else every row is kept, grouped by key).
    dedup: bool,
    /// The run in memory: blocks of encodings, in the order they came.
    blocks: Vec<Encoded>,
    /// Rows given one at a time ([`Runs::push`]), encoded here; a block of `blocks` once it
    /// holds [`TAIL_BYTES`].
    tail: Encoded,
    /// Bytes and rows held by `blocks`.
    bytes: usize,
    held: usize,
    /// Run files by level: level 0 holds runs written from memory, level i + 1 the merges
    /// of `MAX_RUNS` runs of level i. Fewer than `MAX_RUNS` per level.
    files: Vec<Vec<PathBuf>>,
    written: usize,
    /// Rows left out so far because their key came already.
    repeated: usize,
    /// The run being sorted and written on its own thread, while the next one fills.
    writing: Option<Writing>,
    _row: std::marker::PhantomData<fn() -> T>,
}

/// Bytes of rows given one at a time that make a block of a run.
const TAIL_BYTES: usize = 256 << 10;
/// Rows a run in memory holds fewer of, whatever its budget: a row's place in the run is
/// two u32 (its block, its row in the block).
const MAX_RUN_ROWS: usize = u32::MAX as usize;

/// A full run being sorted and written to `path` on a thread of its own; the thread gives
/// back the rows it left out as repeated.
struct Writing {
    path: PathBuf,
    thread: std::thread::JoinHandle<io::Result<usize>>,
}

impl<T: Record> Runs<T> {
    /// Runs named `name` (the file prefix), each up to about `budget` bytes in memory.
    pub fn new(name: &'static str, budget: usize) -> Runs<T> {
        Runs {
            name,
            budget,
            dedup: true,
            blocks: Vec::new(),
            tail: Encoded::default(),
            bytes: 0,
            held: 0,
            files: Vec::new(),
            written: 0,
            repeated: 0,
            writing: None,
            _row: std::marker::PhantomData,
        }
    }

    /// Runs that keep every row: the merge gives rows of equal key one after another.
    pub fn keep_all(name: &'static str, budget: usize) -> Runs<T> {
        let mut runs = Runs::new(name, budget);
        runs.dedup = false;
        runs
    }

    /// Adds a row (encoded now); writes the run to `dir` when it outgrows its budget.
    pub fn push(&mut self, dir: &SpillDir, row: T) -> io::Result<()> {
        self.tail.push(&row)?;
        if self.tail.size() >= TAIL_BYTES || self.held + self.tail.len() >= MAX_RUN_ROWS {
            self.end_tail();
        }
        self.spill_if_full(dir)
    }

    /// Adds a block of rows encoded elsewhere (as they are: the block becomes part of the
    /// run); writes the run to `dir` when it outgrows its budget.
    ///
    /// # Errors
    /// A run file that cannot be written; a block of `MAX_RUN_ROWS` rows or more.
    pub fn push_block(&mut self, dir: &SpillDir, block: Encoded) -> io::Result<()> {
        if block.is_empty() {
            return Ok(());
        }
        if block.len() >= MAX_RUN_ROWS {
            return Err(io::Error::other("a block of over 4 billion rows"));
        }
        // Rows keep the order they came in: the rows given one at a time before this block
        // go before it.
        self.end_tail();
        if self.held + block.len() >= MAX_RUN_ROWS {
            self.spill(dir)?;
        }
        self.held += block.len();
        self.bytes += block.size();
        self.blocks.push(block);
        self.spill_if_full(dir)
    }

    /// The rows given one at a time so far become a block of the run.
    fn end_tail(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.held += tail.len();
            self.bytes += tail.size();
            self.blocks.push(tail);
        }
    }

    /// No row in memory.
    fn memory_is_empty(&self) -> bool {
        self.blocks.is_empty() && self.tail.is_empty()
    }

    fn spill_if_full(&mut self, dir: &SpillDir) -> io::Result<()> {
        if self.bytes + self.tail.size() >= self.budget || self.held >= MAX_RUN_ROWS - 1 {
            self.spill(dir)?;
        }
        Ok(())
    }

    fn next_file(&mut self, dir: &SpillDir) -> PathBuf {
        self.written += 1;
        dir.path()
            .join(format!("{}-{:05}.run", self.name, self.written))
    }

    /// Hands the run in memory to a thread that sorts it and writes it to the next run
    /// file (after the run before it is written), and starts a new run.
    fn spill(&mut self, dir: &SpillDir) -> io::Result<()> {
        self.settle(dir)?;
        self.end_tail();
        let blocks = std::mem::take(&mut self.blocks);
        (self.bytes, self.held) = (0, 0);
        let path = self.next_file(dir);
        let (to, dedup) = (path.clone(), self.dedup);
        let thread = std::thread::Builder::new()
            .name(format!("palpipe-{}-run", self.name))
            .spawn(move || write_run(blocks, dedup, &to))?;
        self.writing = Some(Writing { path, thread });
        Ok(())
    }

    /// Waits for the run being written, if one is, and adds its file.
    pub fn settle(&mut self, dir: &SpillDir) -> io::Result<()> {
        let Some(Writing { path, thread }) = self.writing.take() else {
            return Ok(());
        };
        // A panic on the writing thread goes on here, as it would have on this one.
        let repeated = thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        self.repeated += repeated;
        self.add_file(dir, 0, path)
    }

    /// Adds a run file at `level`; a level that reaches `MAX_RUNS` files is merged into one
    /// file of the next level.
    fn add_file(&mut self, dir: &SpillDir, level: usize, path: PathBuf) -> io::Result<()> {
        if self.files.len() <= level {
            self.files.resize_with(level + 1, Vec::new);
        }
        self.files[level].push(path);
        if self.files[level].len() >= MAX_RUNS {
            let files = std::mem::take(&mut self.files[level]);
            let merged = self.merge_files(dir, &files)?;
            self.add_file(dir, level + 1, merged)?;
        }
        Ok(())
    }

    /// Merges run files into a new one (and removes them).
    fn merge_files(&mut self, dir: &SpillDir, files: &[PathBuf]) -> io::Result<PathBuf> {
        let path = self.next_file(dir);
        let mut w = BufWriter::with_capacity(RUN_BUFFER, File::create(&path)?);
        let mut merged = Merge::<T>::open(files, Sorted::default(), self.dedup)?;
        while let Some(raw) = merged.next_raw()? {
            w.write_all(raw)?;
        }
        w.flush()?;
        self.repeated += merged.repeated;
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        Ok(path)
    }

    /// The run files, fewer than `MAX_RUNS` (the lowest levels, the smallest files, are
    /// merged first), oldest first.
    fn final_files(&mut self, dir: &SpillDir) -> io::Result<Vec<PathBuf>> {
        let mut level = 0;
        while self.files.iter().map(Vec::len).sum::<usize>() >= MAX_RUNS {
            if level >= self.files.len() {
                break;
            }
            let files = std::mem::take(&mut self.files[level]);
            if files.len() > 1 {
                let merged = self.merge_files(dir, &files)?;
                self.add_file(dir, level + 1, merged)?;
            } else {
                // One file (or none): it moves up as it is.
                if let Some(f) = files.into_iter().next() {
                    self.add_file(dir, level + 1, f)?;
                }
            }
            level += 1;
        }
        // Higher levels hold older rows: oldest first keeps the merge's tie order.
        Ok(self.files.drain(..).rev().flatten().collect())
    }

    /// Once some rows went to files, starts writing the rest on a thread of its own (so that
    /// several tables' last runs are written at once, and the run's memory is free before
    /// the merge); [`Runs::settle`] waits for it.
    pub fn start_spilling_rest(&mut self, dir: &SpillDir) -> io::Result<()> {
        let spilled = self.writing.is_some() || self.files.iter().any(|l| !l.is_empty());
        if spilled && !self.memory_is_empty() {
            // Waits for the run before, then hands this one to its thread.
            self.spill(dir)?;
        }
        Ok(())
    }

    /// Every row pushed, one per key, in key order.
    pub fn merge(mut self, dir: &SpillDir) -> io::Result<Merge<T>> {
        self.start_spilling_rest(dir)?;
        self.settle(dir)?;
        self.end_tail();
        let (memory, repeated) = Sorted::new(std::mem::take(&mut self.blocks), self.dedup);
        self.repeated += repeated;
        let files = self.final_files(dir)?;
        let mut merged = Merge::open(&files, memory, self.dedup)?;
        merged.repeated = self.repeated;
        Ok(merged)
    }
}

impl<T> Drop for Runs<T> {
    /// Waits for a run still being written (a run dropped on an error), so that no thread
    /// writes into the spill folder after its owner is gone.
    fn drop(&mut self) {
        if let Some(w) = self.writing.take() {
            let _ = w.thread.join();
        }
    }
}

/// Sorts a run's blocks of encodings and writes them, in key order, to a new run file at
/// `path`; returns the rows left out as repeated (the first row of a key is kept). The
/// encodings are copied into a write buffer of `RUN_BUFFER` bytes, one system call a buffer,
/// each row asked for a few rows before its copy ([`prefetch`]). Until session 34 they went
/// from where they lie, a vectored write of 1,024 rows at a time, and the kernel's copy of
/// those many small pieces took about 12% of a 100 MB ingest's samples; buffered, the ingest
/// takes about 5% less wall time (bench/README.md, "Session 34").
fn write_run(blocks: Vec<Encoded>, dedup: bool, path: &Path) -> io::Result<usize> {
    let (run, repeated) = Sorted::new(blocks, dedup);
    let mut w = BufWriter::with_capacity(RUN_BUFFER, File::create(path)?);
    for (n, &(_, at)) in run.order.iter().enumerate() {
        if let Some(&(_, ahead)) = run.order.get(n + PREFETCH_AHEAD) {
            prefetch(run.row(ahead));
        }
        w.write_all(run.row(at))?;
    }
    w.flush()?;
    Ok(repeated)
}

/// How many rows ahead [`write_run`] asks for the row it will copy (see [`prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to bring the cache lines of the first 256 bytes of `row` into its cache (a
/// hint: it reads nothing and cannot fault). A run's rows are copied out in key order,
/// unrelated to where they lie in memory, so each row's copy would otherwise wait for
/// memory; asked for a few rows ahead, the copies find them in cache (a 100 MB ingest about
/// 2% faster; bench/README.md, "Session 35"). A no-op off x86-64.
#[inline]
fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let start = row.as_ptr();
        // From the start of the line `row` begins in, to the line its 256th byte is in.
        let first = start.wrapping_sub(start.addr() % LINE);
        let span = (start.addr() % LINE) + row.len().min(256);
        for offset in (0..span).step_by(LINE) {
            // SAFETY: a prefetch is a hint that never faults and reads nothing the program
            // sees, whatever the address; these are the lines `row` lies in.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(offset).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The key bytes of the encoded row at `start` (its first value, length-prefixed).
fn encoded_key(encoded: &[u8], start: usize) -> Option<&[u8]> {
    let n = encoded.get(start..start + 4)?;
    let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
    encoded.get(start + 4..start + 4 + n)
}

/// The order of two keys: their bytes' order (as `str::cmp`), most often told by their first
/// eight bytes as one number, without a call to compare the rest. The order runs are sorted
/// in (`Sorted::new`) and merged in (`Head`), each with the prefixes read once.
#[cfg(test)]
fn key_order(a: &[u8], b: &[u8]) -> Ordering {
    prefix(a).cmp(&prefix(b)).then_with(|| a.cmp(b))
}

/// The first eight bytes of a key as a big-endian number (zeros past its end): keys whose
/// prefixes differ are in the prefixes' order.
fn prefix(key: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let n = key.len().min(8);
    head[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(head)
}

/// One source of a merge: a run file, or the run that stayed in memory (sorted; the place
/// of its next row).
enum Source {
    File(BufReader<File>),
    Memory(Sorted, usize),
}

impl Source {
    /// The next row's run encoding into `buf` (cleared first), its fields read by `fields`;
    /// false at the end.
    fn next_raw(&mut self, fields: &[Field], buf: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Source::File(r) => read_raw(r, fields, buf),
            Source::Memory(run, next) => match run.order.get(*next) {
                Some(&(_, at)) => {
                    *next += 1;
                    buf.clear();
                    buf.extend_from_slice(run.row(at));
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}

/// Reads one row's run encoding, as it is, into `buf` (cleared first), following `fields`;
/// false at a clean end of the file (before a row's first byte). A row that lies whole in
/// the reader's buffer is framed there and copied once; one that crosses the buffer's end
/// is read field by field.
pub fn read_raw(r: &mut impl BufRead, fields: &[Field], buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let held = r.fill_buf()?;
    if held.is_empty() {
        return Ok(false);
    }
    if let Some(n) = framed_len(held, fields) {
        buf.extend_from_slice(&held[..n]);
        r.consume(n);
        return Ok(true);
    }
    for (i, field) in fields.iter().enumerate() {
        match *field {
            Field::Value => {
                let mut n = [0u8; 4];
                if i == 0 {
                    if r.read(&mut n[..1])? == 0 {
                        return Ok(false);
                    }
                    read_all(r, &mut n[1..])?;
                } else {
                    read_all(r, &mut n)?;
                }
                buf.extend_from_slice(&n);
                let n = u32::from_le_bytes(n);
                if n != u32::MAX {
                    append_exact(r, buf, n as usize)?;
                }
            }
            Field::Fixed(n) => append_exact(r, buf, n)?,
        }
    }
    Ok(true)
}

/// The length of the row encoding `bytes` begins with, following `fields`; None when the
/// row does not end within `bytes`.
fn framed_len(bytes: &[u8], fields: &[Field]) -> Option<usize> {
    let mut at = 0usize;
    for field in fields {
        match *field {
            Field::Value => {
                let n = bytes.get(at..at + 4)?;
                let n = u32::from_le_bytes(n.try_into().ok()?);
                at += 4;
                if n != u32::MAX {
                    at = at.checked_add(n as usize)?;
                }
            }
            Field::Fixed(n) => at = at.checked_add(n)?,
        }
    }
    (at <= bytes.len()).then_some(at)
}

/// Appends exactly `n` bytes of `r` to `buf`. Memory grows with what is read, not with what a
/// damaged length claims.
fn append_exact(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let start = buf.len();
    if n <= SMALL_VALUE {
        buf.resize(start + n, 0);
        return read_all(r, &mut buf[start..]);
    }
    if r.take(n as u64).read_to_end(buf)? != n {
        return Err(corrupt("truncated"));
    }
    Ok(())
}

/// Values up to this many bytes are read into zeroed room (cheaper than `read_to_end`).
const SMALL_VALUE: usize = 64 << 10;

/// `read_exact`, with a file that ends early reported as a damaged run file.
fn read_all(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated"),
        _ => e,
    })
}

/// The largest buffer a merge keeps for the next rows.
const SPARE_CAPACITY: usize = 1 << 20;

/// The head row of a source (its run encoding), ordered so that the smallest key is on top
/// of the heap (and, between equal keys, the earlier source, which makes the merge
/// deterministic).
struct Head {
    raw: Vec<u8>,
    source: usize,
    /// The key's [`prefix`], read once.
    prefix: u64,
}

impl Head {
    /// The head row `raw` of `source`.
    ///
    /// # Errors
    /// An `InvalidData` error when `raw` does not begin with a key.
    fn new(raw: Vec<u8>, source: usize) -> io::Result<Head> {
        let prefix = match encoded_key(&raw, 0) {
            Some(key) => prefix(key),
            None => return Err(corrupt("a row's key is absent")),
        };
        Ok(Head {
            raw,
            source,
            prefix,
        })
    }

    fn key(&self) -> &[u8] {
        encoded_key(&self.raw, 0).unwrap_or_default()
    }
}

impl Ord for Head {
    /// [`key_order`] reversed, with the prefixes read once.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.prefix.cmp(&self.prefix))
            .then_with(|| other.key().cmp(self.key()))
            .then(other.source.cmp(&self.source))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// The merge of sorted runs: rows in key order, one per key (or all, see
/// [`Runs::keep_all`]). Rows move through it in their run encoding; [`Merge::next_raw`]
/// hands that on as it is (a run file, Arrow columns: see `columns.rs`), [`Merge::next_row`]
/// decodes it.
pub struct Merge<T> {
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
    dedup: bool,
    /// The row last given by [`Merge::next_raw`] (empty before the first: an encoding never
    /// is).
    current: Vec<u8>,
    /// Buffers of rows done with, for the next rows read.
    spare: Vec<Vec<u8>>,
    /// Rows left out because their key came already (in the runs, and in the merge).
    pub repeated: usize,
    _row: std::marker::PhantomData<fn() -> T>,
}

impl<T: Record> Merge<T> {
    fn open(files: &[PathBuf], memory: Sorted, dedup: bool) -> io::Result<Merge<T>> {
        let mut sources = Vec::with_capacity(files.len() + 1);
        for f in files {
            sources.push(Source::File(BufReader::with_capacity(
                RUN_BUFFER,
                File::open(f)?,
            )));
        }
        sources.push(Source::Memory(memory, 0));
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (i, s) in sources.iter_mut().enumerate() {
            let mut raw = Vec::new();
            if s.next_raw(T::FIELDS, &mut raw)? {
                heap.push(Head::new(raw, i)?);
            }
        }
        Ok(Merge {
            sources,
            heap,
            dedup,
            current: Vec::new(),
            spare: Vec::new(),
            repeated: 0,
            _row: std::marker::PhantomData,
        })
    }

    /// The run encoding of the next row whose key has not come yet.
    pub fn next_raw(&mut self) -> io::Result<Option<&[u8]>> {
        while let Some(Head { raw, source, .. }) = self.heap.pop() {
            let mut next = self.spare.pop().unwrap_or_default();
            if self.sources[source].next_raw(T::FIELDS, &mut next)? {
                self.heap.push(Head::new(next, source)?);
            } else {
                self.keep_spare(next);
            }
            if self.dedup && encoded_key(&self.current, 0) == encoded_key(&raw, 0) {
                self.repeated += 1;
                self.keep_spare(raw);
                continue;
            }
            let done = std::mem::replace(&mut self.current, raw);
            self.keep_spare(done);
            return Ok(Some(&self.current));
        }
        Ok(None)
    }

    /// Keeps a row's buffer for the next rows, unless a large row (an image) made it large:
    /// the merge then holds large buffers only while such rows pass.
    fn keep_spare(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= SPARE_CAPACITY {
            self.spare.push(buf);
        }
    }

    /// The next row whose key has not come yet.
    pub fn next_row(&mut self) -> io::Result<Option<T>> {
        match self.next_raw()? {
            None => Ok(None),
            Some(raw) => T::decode(raw).map(Some),
        }
    }
}

/// Writes a length-prefixed value (`None`: the absent marker).
pub fn put_bytes(w: &mut impl Write, b: Option<&[u8]>) -> io::Result<()> {
    match b {
        None => w.write_all(&u32::MAX.to_le_bytes()),
        Some(b) => {
            let n = u32::try_from(b.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a value over 4 GiB"))?;
            w.write_all(&n.to_le_bytes())?;
            w.write_all(b)
        }
    }
}

/// Writes a string.
pub fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    put_bytes(w, Some(s.as_bytes()))
}

/// Writes an optional string.
pub fn put_opt(w: &mut impl Write, s: Option<&str>) -> io::Result<()> {
    put_bytes(w, s.map(str::as_bytes))
}

/// The error of a run file (or a row's encoding) that does not read back.
pub fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a run file is damaged ({what})"),
    )
}

/// The fields of one row's run encoding, read in order (see [`super::spill::Field`]).
pub struct RawFields<'a> {
    rest: &'a [u8],
}

impl<'a> RawFields<'a> {
    /// The fields of `raw`, one row's encoding.
    pub fn new(raw: &'a [u8]) -> RawFields<'a> {
        RawFields { rest: raw }
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// A length-prefixed value; `None` for the absent marker.
    pub fn value(&mut self) -> io::Result<Option<&'a [u8]>> {
        let n = u32::from_le_bytes(self.fixed::<4>()?);
        if n == u32::MAX {
            return Ok(None);
        }
        self.take(n as usize).map(Some)
    }

    /// An optional string.
    pub fn opt_str(&mut self) -> io::Result<Option<&'a str>> {
        match self.value()? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| corrupt("text is not UTF-8")),
        }
    }

    /// A string that must be there.
    pub fn str(&mut self) -> io::Result<&'a str> {
        self.opt_str()?
            .ok_or_else(|| corrupt("a required value is absent"))
    }

    /// A value of `N` bytes.
    pub fn fixed<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// An `items` row's fields, borrowed ([`ItemRow`]'s): how a row is encoded where it is
/// made, without a struct of owned strings first.
pub struct ItemRef<'a> {
    pub item_id: &'a str,
    pub kind: &'a str,
    pub text: Option<&'a str>,
    pub bytes: Option<&'a [u8]>,
    pub source: &'a str,
    pub parent_id: Option<&'a str>,
}

impl ItemRef<'_> {
    /// Writes the row's run encoding (six length-prefixed values, [`ItemRow::FIELDS`]).
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        put_str(w, self.item_id)?;
        put_str(w, self.kind)?;
        put_opt(w, self.text)?;
        put_bytes(w, self.bytes)?;
        put_str(w, self.source)?;
        put_opt(w, self.parent_id)
    }
}

/// A `prompts` row's fields, borrowed ([`PromptRow`]'s).
pub struct PromptRef<'a> {
    pub prompt_id: &'a str,
    pub text: &'a str,
    pub source: &'a str,
}

impl PromptRef<'_> {
    /// Writes the row's run encoding (three length-prefixed values, [`PromptRow::FIELDS`]).
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        put_str(w, self.prompt_id)?;
        put_str(w, self.text)?;
        put_str(w, self.source)
    }
}

/// A `pairs` row's fields, borrowed ([`PairRow`]'s).
pub struct PairRef<'a> {
    pub pair_id: &'a str,
    pub user_id: &'a str,
    pub prompt_id: Option<&'a str>,
    pub left_id: &'a str,
    pub right_id: &'a str,
    pub label: i8,
    pub dataset: &'a str,
    pub split: &'a str,
    pub source_ref: Option<&'a str>,
    pub weight: f32,
}

impl PairRef<'_> {
    /// Writes the row's run encoding ([`PairRow::FIELDS`]: the label one byte, the weight
    /// four little-endian bytes).
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        put_str(w, self.pair_id)?;
        put_str(w, self.user_id)?;
        put_opt(w, self.prompt_id)?;
        put_str(w, self.left_id)?;
        put_str(w, self.right_id)?;
        w.write_all(&[self.label as u8])?;
        put_str(w, self.dataset)?;
        put_str(w, self.split)?;
        put_opt(w, self.source_ref)?;
        w.write_all(&self.weight.to_le_bytes())
    }
}

impl Record for ItemRow {
    const FIELDS: &'static [Field] = &[Field::Value; 6];
    fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        ItemRef {
            item_id: &self.item_id,
            kind: &self.kind,
            text: self.text.as_deref(),
            bytes: self.bytes.as_deref(),
            source: &self.source,
            parent_id: self.parent_id.as_deref(),
        }
        .encode(w)
    }
    fn decode(raw: &[u8]) -> io::Result<ItemRow> {
        let mut f = RawFields::new(raw);
        Ok(ItemRow {
            item_id: f.str()?.to_string(),
            kind: f.str()?.to_string(),
            text: f.opt_str()?.map(String::from),
            bytes: f.value()?.map(<[u8]>::to_vec),
            source: f.str()?.to_string(),
            parent_id: f.opt_str()?.map(String::from),
        })
    }
}

impl Record for PromptRow {
    const FIELDS: &'static [Field] = &[Field::Value; 3];
    fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        PromptRef {
            prompt_id: &self.prompt_id,
            text: &self.text,
            source: &self.source,
        }
        .encode(w)
    }
    fn decode(raw: &[u8]) -> io::Result<PromptRow> {
        let mut f = RawFields::new(raw);
        Ok(PromptRow {
            prompt_id: f.str()?.to_string(),
            text: f.str()?.to_string(),
            source: f.str()?.to_string(),
        })
    }
}

impl Record for PairRow {
    const FIELDS: &'static [Field] = &[
        Field::Value,
        Field::Value,
        Field::Value,
        Field::Value,
        Field::Value,
        Field::Fixed(1),
        Field::Value,
        Field::Value,
        Field::Value,
        Field::Fixed(4),
    ];
    fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        PairRef {
            pair_id: &self.pair_id,
            user_id: &self.user_id,
            prompt_id: self.prompt_id.as_deref(),
            left_id: &self.left_id,
            right_id: &self.right_id,
            label: self.label,
            dataset: &self.dataset,
            split: &self.split,
            source_ref: self.source_ref.as_deref(),
            weight: self.weight,
        }
        .encode(w)
    }
    fn decode(raw: &[u8]) -> io::Result<PairRow> {
        let mut f = RawFields::new(raw);
        Ok(PairRow {
            pair_id: f.str()?.to_string(),
            user_id: f.str()?.to_string(),
            prompt_id: f.opt_str()?.map(String::from),
            left_id: f.str()?.to_string(),
            right_id: f.str()?.to_string(),
            label: f.fixed::<1>()?[0] as i8,
            dataset: f.str()?.to_string(),
            split: f.str()?.to_string(),
            source_ref: f.opt_str()?.map(String::from),
            weight: f32::from_le_bytes(f.fixed::<4>()?),
        })
    }
}

/// Checks that `T::FIELDS` frames `T::encode`: rows encoded back to back read back by
/// [`read_raw`] one encoding at a time, exactly, then a clean end; and a file cut anywhere
/// inside the last row is a damaged run file, never a row or a clean end.
#[cfg(test)]
pub(crate) fn assert_fields_frame<T: Record + std::fmt::Debug>(rows: &[T]) {
    let mut file = Vec::new();
    let mut ends = Vec::new();
    for row in rows {
        row.encode(&mut file).unwrap();
        ends.push(file.len());
    }
    let mut buf = Vec::new();
    // Whole in the reader's buffer (a slice), and through buffers of a few bytes, so that rows
    // and their fields cross the buffer's end at every place.
    for capacity in [usize::MAX, 1, 3, 7, 64] {
        let mut r: Box<dyn BufRead> = match capacity {
            usize::MAX => Box::new(file.as_slice()),
            c => Box::new(BufReader::with_capacity(c, file.as_slice())),
        };
        let mut start = 0;
        for (row, &end) in rows.iter().zip(&ends) {
            assert!(read_raw(&mut r, T::FIELDS, &mut buf).unwrap(), "{row:?}");
            assert_eq!(buf, file[start..end], "{row:?} (buffer {capacity})");
            start = end;
        }
        assert!(!read_raw(&mut r, T::FIELDS, &mut buf).unwrap());
    }
    let last = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
    for cut in last + 1..file.len() {
        let mut r = &file[last..cut];
        let err = read_raw(&mut r, T::FIELDS, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        let mut r = BufReader::with_capacity(5, &file[last..cut]);
        let err = read_raw(&mut r, T::FIELDS, &mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidData,
            "cut at {cut}, buffer 5"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field layouts of the store's row types frame their encodings, optional values
    /// present and absent.
    #[test]
    fn record_fields_frame_their_encodings() {
        let item = |text: Option<&str>, bytes: Option<Vec<u8>>, parent: Option<&str>| ItemRow {
            item_id: "i".repeat(64),
            kind: if bytes.is_some() { "image" } else { "text" }.into(),
            text: text.map(String::from),
            bytes,
            source: "d".into(),
            parent_id: parent.map(String::from),
        };
        assert_fields_frame(&[
            item(Some("a text"), None, None),
            item(None, Some(vec![0, 255, 7]), Some("p")),
            item(Some(""), Some(Vec::new()), None),
        ]);
        assert_fields_frame(&[prompt("k1"), prompt("k2")]);
        let pair = |prompt: Option<&str>, source_ref: Option<&str>| PairRow {
            pair_id: "p".repeat(64),
            user_id: "d/u".into(),
            prompt_id: prompt.map(String::from),
            left_id: "a".into(),
            right_id: "b".into(),
            label: 1,
            dataset: "d".into(),
            split: "train".into(),
            source_ref: source_ref.map(String::from),
            weight: 0.5,
        };
        assert_fields_frame(&[pair(None, Some("r")), pair(Some("x"), None)]);
    }

    fn prompt(id: &str) -> PromptRow {
        PromptRow {
            prompt_id: id.into(),
            text: format!("text of {id}"),
            source: "d".into(),
        }
    }

    /// Whatever the budget (all in memory, a file per row, more runs than are merged at
    /// once), the merge gives each key once, in order, and counts the repeats.
    #[test]
    fn runs_merge_to_one_row_per_key_in_order_whatever_the_budget() {
        // 300 rows over 97 keys, in a scrambled order: keys k00000..k00096.
        let keys: Vec<String> = (0..300u64)
            .map(|i| format!("k{:05}", (i * 7919) % 97))
            .collect();
        let mut want: Vec<String> = keys.clone();
        want.sort();
        want.dedup();
        assert_eq!(want.len(), 97);
        for budget in [1usize, 200, 5_000, 1 << 30] {
            let dir = SpillDir::new().unwrap();
            let mut runs = Runs::new("prompts", budget);
            for k in &keys {
                runs.push(&dir, prompt(k)).unwrap();
            }
            let mut merged = runs.merge(&dir).unwrap();
            let mut got = Vec::new();
            while let Some(row) = merged.next_row().unwrap() {
                assert_eq!(row.text, format!("text of {}", row.prompt_id));
                got.push(row.prompt_id);
            }
            assert_eq!(got, want, "budget {budget}");
            assert_eq!(merged.repeated, 300 - 97, "budget {budget}");
            let path = dir.path().to_path_buf();
            drop(dir);
            assert!(!path.exists(), "the spill folder is removed");
        }
    }

    /// Past `MAX_RUNS` runs the merges go level by level: 4,095 one-row runs make 63 merges
    /// of 64 runs (level 1) while they come, then at the end the 63 runs left are merged
    /// (making level 1 full) and level 1 into one file: 4,095 + 63 + 1 + 1 files written,
    /// each row written 3 times in all; and every key comes out once, in order.
    #[test]
    fn many_runs_merge_level_by_level() {
        let n = 63 * 64 + 63;
        let keys: Vec<String> = (0..n as u64)
            .map(|i| format!("k{:05}", (i * 7919) % n as u64))
            .collect();
        let dir = SpillDir::new().unwrap();
        let mut runs = Runs::new("prompts", 1);
        for k in &keys {
            runs.push(&dir, prompt(k)).unwrap();
        }
        // The last full run may still be on its writing thread.
        runs.settle(&dir).unwrap();
        assert_eq!(runs.files.len(), 2);
        assert_eq!((runs.files[0].len(), runs.files[1].len()), (63, 63));
        let mut merged = Runs::merge(runs, &dir).unwrap();
        let mut got = Vec::new();
        while let Some(row) = merged.next_row().unwrap() {
            got.push(row.prompt_id);
        }
        let mut want = keys.clone();
        want.sort();
        assert_eq!(got, want);
        let written = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(written, 1, "one run file left: {written}");
    }

    /// Runs dropped without a merge (as when an ingest fails) wait for the run still being
    /// written: its file is whole when the drop returns, so the spill folder, dropped after,
    /// is removed with nothing writing into it.
    #[test]
    fn dropped_runs_wait_for_the_run_being_written() {
        let dir = SpillDir::new().unwrap();
        let mut runs = Runs::new("prompts", 1 << 20);
        let mut want = 0usize;
        for i in 0.. {
            let row = prompt(&format!("k{i:07}"));
            let mut encoded = Vec::new();
            row.encode(&mut encoded).unwrap();
            want += encoded.len();
            runs.push(&dir, row).unwrap();
            if runs.writing.is_some() {
                break;
            }
        }
        drop(runs);
        let path = dir.path().join("prompts-00001.run");
        let got = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(got, want, "the run's file holds every row of the run");
    }

    /// `key_order` is `str::cmp`, on keys that share prefixes, are shorter than eight bytes,
    /// or hold zero bytes.
    #[test]
    fn key_order_is_the_strings_order() {
        let keys = [
            "",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "abcdefgh",
            "abcdefg",
            "abcdefgh\0",
            "abcdefghi",
            "abcdefgi",
            "b",
            "\u{1f}",
            "ff00",
            "ff",
            "00ff",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(
                    key_order(a.as_bytes(), b.as_bytes()),
                    a.cmp(b),
                    "{a:?} {b:?}"
                );
            }
        }
    }

    /// A run file holds the run's rows encoded in key order (the first of a key's rows only,
    /// when de-duplicating; all of them in the order they came otherwise): the same bytes as
    /// a stable sort of the rows by key, encoded one by one. Keys share 8-byte prefixes, are
    /// shorter than 8 bytes, or repeat with different texts (to see which row is kept).
    #[test]
    fn a_written_run_is_its_rows_encoded_in_key_order() {
        let keys = [
            "prefix00b",
            "k",
            "prefix00a",
            "k",
            "prefix00",
            "",
            "zz",
            "prefix00a",
            "a\u{e9}",
            "k",
        ];
        let rows: Vec<PromptRow> = (keys.iter().enumerate())
            .map(|(i, k)| PromptRow {
                prompt_id: k.to_string(),
                text: format!("row {i}"),
                source: "d".into(),
            })
            .collect();
        for dedup in [true, false] {
            let mut want_rows = rows.clone();
            want_rows.sort_by(|a, b| a.prompt_id.cmp(&b.prompt_id)); // stable
            if dedup {
                want_rows.dedup_by(|a, b| a.prompt_id == b.prompt_id);
            }
            let mut want = Vec::new();
            for row in &want_rows {
                row.encode(&mut want).unwrap();
            }
            let dir = SpillDir::new().unwrap();
            let path = dir.path().join("run");
            // The rows in blocks of three, as parsing threads hand them on.
            let blocks: Vec<Encoded> = (rows.chunks(3))
                .map(|chunk| {
                    let mut block = Encoded::default();
                    for row in chunk {
                        block.push(row).unwrap();
                    }
                    block
                })
                .collect();
            let repeated = write_run(blocks, dedup, &path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want, "dedup {dedup}");
            assert_eq!(repeated, rows.len() - want_rows.len(), "dedup {dedup}");
        }
    }

    /// Rows handed on in blocks (a parsing thread's) and rows given one at a time, mixed,
    /// merge to what the same rows given one at a time do, whatever the budget.
    #[test]
    fn blocks_and_single_rows_merge_alike() {
        let keys: Vec<String> = (0..500u64)
            .map(|i| format!("k{:05}", (i * 7919) % 211))
            .collect();
        let merged = |runs: Runs<PromptRow>, dir: &SpillDir| {
            let mut m = runs.merge(dir).unwrap();
            let mut got = Vec::new();
            while let Some(row) = m.next_row().unwrap() {
                got.push(row);
            }
            (got, m.repeated)
        };
        let dir = SpillDir::new().unwrap();
        let mut one_by_one = Runs::new("prompts", 1 << 30);
        for k in &keys {
            one_by_one.push(&dir, prompt(k)).unwrap();
        }
        let (want, want_repeated) = merged(one_by_one, &dir);
        assert_eq!(want.len(), 211);
        assert_eq!(want_repeated, 500 - 211);
        for budget in [1usize, 700, 5_000, 1 << 30] {
            let dir = SpillDir::new().unwrap();
            let mut runs = Runs::new("prompts", budget);
            for (n, chunk) in keys.chunks(7).enumerate() {
                if n % 3 == 0 {
                    for k in chunk {
                        runs.push(&dir, prompt(k)).unwrap();
                    }
                } else {
                    let mut block = Encoded::default();
                    for k in chunk {
                        block.push(&prompt(k)).unwrap();
                    }
                    runs.push_block(&dir, block).unwrap();
                }
            }
            runs.push_block(&dir, Encoded::default()).unwrap();
            assert_eq!(
                merged(runs, &dir),
                (want.clone(), want_repeated),
                "budget {budget}"
            );
        }
    }

    /// An encoding that does not begin with a key (or fails) is refused, and leaves the
    /// block as it was.
    #[test]
    fn a_block_refuses_an_encoding_without_its_key() {
        let mut block = Encoded::default();
        block.push(&prompt("a")).unwrap();
        let (bytes, len) = (block.bytes.len(), block.len());
        let short = block.push_with(|w| w.write_all(&[9, 0]));
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let failed = block.push_with(|w| {
            w.write_all(b"part")?;
            Err(io::Error::other("no"))
        });
        assert!(failed.is_err());
        assert_eq!((block.bytes.len(), block.len()), (bytes, len));
        assert_eq!(block.row(0), {
            let mut want = Vec::new();
            prompt("a").encode(&mut want).unwrap();
            want
        });
    }

    /// Each record type reads back as written, absent values included.
    #[test]
    fn records_round_trip_through_a_run_file() {
        let item = ItemRow {
            item_id: "i".into(),
            kind: "image".into(),
            text: None,
            bytes: Some(vec![0, 255, 7]),
            source: "s".into(),
            parent_id: Some("p".into()),
        };
        let pair = PairRow {
            pair_id: "p".into(),
            user_id: "d/u".into(),
            prompt_id: None,
            left_id: "a".into(),
            right_id: "b".into(),
            label: -1,
            dataset: "d".into(),
            split: "train".into(),
            source_ref: Some("r7".into()),
            weight: 2.5,
        };
        let mut buf = Vec::new();
        item.encode(&mut buf).unwrap();
        item.encode(&mut buf).unwrap();
        // Rows read back one encoding at a time, as a merge reads a run file.
        let next = |r: &mut &[u8]| -> io::Result<Option<Vec<u8>>> {
            let mut raw = Vec::new();
            Ok(read_raw(r, ItemRow::FIELDS, &mut raw)?.then_some(raw))
        };
        let mut r = buf.as_slice();
        let decoded = |raw: Option<Vec<u8>>| raw.map(|raw| ItemRow::decode(&raw).unwrap());
        assert_eq!(decoded(next(&mut r).unwrap()), Some(item.clone()));
        assert_eq!(decoded(next(&mut r).unwrap()), Some(item));
        assert_eq!(decoded(next(&mut r).unwrap()), None);
        let mut buf = Vec::new();
        pair.encode(&mut buf).unwrap();
        assert_eq!(PairRow::decode(&buf).unwrap(), pair.clone());
        // A row cut short is an error.
        assert!(PairRow::decode(&buf[..buf.len() - 1]).is_err());
    }
}
