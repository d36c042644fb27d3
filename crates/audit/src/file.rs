//! JSON lines in files, written by a thread of their own.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};

use crate::chain::{self, GENESIS};
use crate::event::AuditEvent;
use crate::operation::OperationEvent;
use crate::sink::AuditSink;

/// When a new file is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// One file a day, `<prefix>.YYYY-MM-DD.jsonl` (UTC), by `tracing-appender`.
    Daily,
    /// A new file when the current one would pass this many bytes. The current file is
    /// `<prefix>.jsonl`; full ones are renamed `<prefix>.000001.jsonl`, `….000002.jsonl`, …
    Size(u64),
    /// One file, `<prefix>.jsonl`, forever.
    Never,
}

/// What happens when events arrive faster than the file takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Requests wait for room in the queue: nothing is lost, and a slow disk slows
    /// requests down (the default).
    Block,
    /// Events that find the queue full are dropped and counted. The count is written to
    /// the file as an `audit_records_dropped` record as soon as there is room, and
    /// [`FileSink::dropped`] reports it: nothing is lost silently.
    Drop,
}

/// Builds a [`FileSink`].
pub struct FileSinkBuilder {
    target: Target,
    prefix: String,
    rotation: Rotation,
    overflow: Overflow,
    capacity: usize,
    hash_chain: bool,
}

enum Target {
    Directory(PathBuf),
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for FileSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Directory(directory) => directory.display().to_string(),
            Target::Writer(_) => "a writer".to_owned(),
        };
        f.debug_struct("FileSinkBuilder")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("rotation", &self.rotation)
            .field("overflow", &self.overflow)
            .field("capacity", &self.capacity)
            .field("hash_chain", &self.hash_chain)
            .finish()
    }
}

impl FileSinkBuilder {
    /// The file name prefix (`audit` by default).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// [`Rotation::Daily`] by default.
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// [`Overflow::Block`] by default.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How many events may wait for the writer (8,192 by default; at least 1, a zero
    /// is taken as 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Seals every record into a SHA-256 chain (see [`verify_files`](crate::verify_files)
    /// and `portcullis audit verify`). Off by default.
    pub fn hash_chain(mut self, on: bool) -> Self {
        self.hash_chain = on;
        self
    }

    /// Opens the file and starts the writer thread.
    pub fn build(self) -> io::Result<FileSink> {
        let durable = match &self.target {
            Target::Directory(directory) => Some(Durable {
                directory: directory.clone(),
                prefix: self.prefix.clone(),
                rotation: self.rotation,
            }),
            Target::Writer(_) => None,
        };
        let (writer, current, last_hash) = match self.target {
            Target::Directory(ref directory) => {
                std::fs::create_dir_all(directory)?;
                let (writer, current) = open_writer(directory, &self.prefix, self.rotation)?;
                let last_hash = chain::last_hash_of(&current);
                (writer, current, last_hash)
            }
            Target::Writer(writer) => (
                Box::new(BufWriter::new(writer)) as Box<dyn Write + Send>,
                PathBuf::new(),
                None,
            ),
        };
        let prev = self.hash_chain.then(|| last_hash.unwrap_or(GENESIS));
        let (sender, receiver) = mpsc::sync_channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let lines = Arc::new(LinePool::default());
        let thread = {
            let dropped = dropped.clone();
            let lines = lines.clone();
            std::thread::Builder::new()
                .name("portcullis-audit".into())
                .spawn(move || write_loop(receiver, writer, prev, &dropped, &lines))?
        };
        Ok(FileSink {
            inner: Arc::new(Inner {
                sender: Some(sender),
                thread: Some(thread),
                dropped,
                overflow: self.overflow,
                path: current,
                lines,
                durable,
            }),
        })
    }
}

fn open_writer(
    directory: &Path,
    prefix: &str,
    rotation: Rotation,
) -> io::Result<(Box<dyn Write + Send>, PathBuf)> {
    match rotation {
        Rotation::Daily => {
            let appender = RollingFileAppender::builder()
                .rotation(AppenderRotation::DAILY)
                .filename_prefix(prefix)
                .filename_suffix("jsonl")
                .build(directory)
                .map_err(io::Error::other)?;
            let today = humantime::format_rfc3339(SystemTime::now()).to_string();
            let current = directory.join(format!("{prefix}.{}.jsonl", &today[..10]));
            Ok((
                Box::new(BufWriter::with_capacity(WRITE_BUFFER, appender)),
                current,
            ))
        }
        Rotation::Size(max) => {
            let writer = SizeRotating::open(directory, prefix, max)?;
            let current = writer.current.clone();
            Ok((Box::new(writer), current))
        }
        Rotation::Never => {
            let current = directory.join(format!("{prefix}.jsonl"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&current)?;
            Ok((
                Box::new(BufWriter::with_capacity(WRITE_BUFFER, file)),
                current,
            ))
        }
    }
}

enum Message {
    /// A rendered line, without the newline.
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// Line buffers the writer thread has written, for requests to render into again.
///
/// Events are rendered on the request's thread into a buffer from here, and the writer
/// returns the buffer when the line is written. In the steady state nothing is
/// allocated or freed per event, and nothing allocated on one thread is freed on
/// another: with the system allocator, handing each event's memory to the writer
/// thread to free cost more than rendering it there saved.
#[derive(Default)]
struct LinePool(Mutex<Vec<Vec<u8>>>);

impl LinePool {
    /// Buffers kept at most; more are freed.
    const KEEP: usize = 1024;
    /// A buffer that grew past this (an unusually long event) is freed, not kept.
    const LARGEST: usize = 16 * 1024;

    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(1024))
    }

    fn give_back(&self, used: &mut Vec<Vec<u8>>) {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for mut line in used.drain(..) {
            if pool.len() < Self::KEEP && line.capacity() <= Self::LARGEST {
                line.clear();
                pool.push(line);
            }
        }
    }
}

/// Audit events as JSON lines in files, with rotation, written by a background thread
/// so that requests never wait on the disk (unless [`Overflow::Block`] and the queue is
/// full). Cheap to clone; the thread finishes writing and stops when the last clone is
/// dropped.
///
/// ```no_run
/// use portcullis_audit::{AuditLayer, FileSink, Overflow, Rotation};
///
/// let sink = FileSink::builder("/var/log/api")
///     .rotation(Rotation::Daily)
///     .overflow(Overflow::Block)
///     .hash_chain(true)
///     .build()?;
/// let layer = AuditLayer::new().sink(sink);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while the sink is being dropped.
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    overflow: Overflow,
    path: PathBuf,
    lines: Arc<LinePool>,
    /// Where the files are, for [`FileSink::sync`]; `None` for a writer.
    durable: Option<Durable>,
}

/// What [`FileSink::sync`] needs to find the file being written.
struct Durable {
    directory: PathBuf,
    prefix: String,
    rotation: Rotation,
}

impl Durable {
    /// The file being written now, and the one written at start if that differs (a
    /// daily file of another day).
    fn files(&self, at_start: &Path) -> Vec<PathBuf> {
        let mut files = vec![at_start.to_owned()];
        if self.rotation == Rotation::Daily {
            let today = humantime::format_rfc3339(SystemTime::now()).to_string();
            let now = self
                .directory
                .join(format!("{}.{}.jsonl", self.prefix, &today[..10]));
            if now != at_start {
                files.push(now);
            }
        }
        files
    }
}

impl FileSink {
    /// A sink writing files into `directory`.
    pub fn builder(directory: impl Into<PathBuf>) -> FileSinkBuilder {
        Self::with_target(Target::Directory(directory.into()))
    }

    /// A sink writing JSON lines to any writer, such as `std::io::stdout()`, from its
    /// own thread. Rotation and prefix do not apply.
    pub fn to_writer(writer: impl Write + Send + 'static) -> FileSinkBuilder {
        Self::with_target(Target::Writer(Box::new(writer)))
    }

    fn with_target(target: Target) -> FileSinkBuilder {
        FileSinkBuilder {
            target,
            prefix: "audit".to_owned(),
            rotation: Rotation::Daily,
            overflow: Overflow::Block,
            capacity: 8192,
            hash_chain: false,
        }
    }

    /// Events dropped so far because the queue was full ([`Overflow::Drop`] only).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The file being written when the sink was built (empty for a writer).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Waits until every event recorded so far is written and flushed.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(sender) = &self.inner.sender {
            if sender.send(Message::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Waits until every event recorded so far is written, then has the OS put it on
    /// disk: an fsync of the file being written and of its directory (so that a file
    /// made since the last sync is found after a crash). A sink writing to a writer is
    /// only flushed. For a clean shutdown: every event recorded before the call
    /// survives a power cut after it returns.
    pub fn sync(&self) -> io::Result<()> {
        self.flush();
        let Some(durable) = &self.inner.durable else {
            return Ok(());
        };
        for file in durable.files(&self.inner.path) {
            match File::open(&file) {
                Ok(file) => file.sync_all()?,
                // Not made yet: nothing was written to it.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        File::open(&durable.directory)?.sync_all()
    }

    fn send(&self, message: Message) {
        // `SyncSender` is shared by reference: no lock between requests.
        let Some(sender) = &self.inner.sender else {
            return;
        };
        match self.inner.overflow {
            Overflow::Block => {
                let _ = sender.send(message);
            }
            Overflow::Drop => {
                if let Err(TrySendError::Full(_)) = sender.try_send(message) {
                    self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("portcullis_audit_records_dropped_total").increment(1);
                }
            }
        }
    }
}

impl AuditSink for FileSink {
    fn record(&self, event: &AuditEvent) {
        let mut line = self.inner.lines.take();
        event.write_json(&mut line);
        self.send(Message::Line(line));
    }

    /// A line of its own, sealed into the chain like the requests' events.
    fn record_operation(&self, event: &OperationEvent) {
        self.send(Message::Line(event.to_json()));
    }
}

impl fmt::Debug for FileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.inner.path)
            .field("overflow", &self.inner.overflow)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain the queue and stop.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The file writer's buffer: a batch of events (a few milliseconds' worth under load)
/// reaches the OS in a few large writes rather than one per 8 KiB.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long the writer thread rests after writing a batch. Events reach the OS at most
/// this much later than they would one by one.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

fn write_loop(
    receiver: Receiver<Message>,
    mut writer: Box<dyn Write + Send>,
    mut prev: Option<[u8; 32]>,
    dropped: &AtomicU64,
    lines: &LinePool,
) {
    let mut reported = 0u64;
    // The lines of the current batch, given back to the pool together.
    let mut written: Vec<Vec<u8>> = Vec::new();
    let mut write = |writer: &mut Box<dyn Write + Send>, line: &mut Vec<u8>| {
        if let Some(prev) = prev.as_mut() {
            *prev = chain::seal(line, prev);
        }
        line.push(b'\n');
        if let Err(error) = writer.write_all(line) {
            cannot_write(&error);
        }
    };
    let mut handle = |writer: &mut Box<dyn Write + Send>, message: Message| {
        // Drops are themselves audited, as soon as the queue has room again, and before
        // a flush returns.
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            let record = serde_json::json!({
                "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "event": "audit_records_dropped",
                "count": now - reported,
                "total": now,
            });
            tracing::warn!(target: "portcullis::audit", dropped = now - reported, total = now, "audit records dropped: the file sink fell behind");
            write(writer, &mut record.to_string().into_bytes());
            reported = now;
        }
        match message {
            Message::Line(mut line) => {
                write(writer, &mut line);
                Some(line)
            }
            Message::Flush(done) => {
                let _ = writer.flush();
                let _ = done.send(());
                None
            }
        }
    };
    // Whatever is queued is written as one batch and handed to the OS when the queue is
    // empty; then the thread rests for `BATCH_WINDOW`. While it rests, requests only
    // enqueue: no wake-up of this thread and no context switch per event, which on a
    // host with one core cost more than the event itself.
    while let Ok(first) = receiver.recv() {
        written.extend(handle(&mut writer, first));
        loop {
            match receiver.try_recv() {
                Ok(message) => written.extend(handle(&mut writer, message)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = writer.flush();
                    return;
                }
            }
        }
        if let Err(error) = writer.flush() {
            cannot_write(&error);
        }
        // The records the queue held when the writer woke, all written now (flush
        // requests are not records; no-ops unless the host installed a recorder).
        let records = written.len();
        metrics::gauge!("portcullis_audit_queue_depth").set(records as f64);
        metrics::counter!("portcullis_audit_records_written_total").increment(records as u64);
        lines.give_back(&mut written);
        std::thread::sleep(BATCH_WINDOW);
    }
    let _ = writer.flush();
}

/// Logs a write failure at most once a second: a full disk fails every line.
fn cannot_write(error: &io::Error) {
    static THROTTLE: portcullis_core::LogThrottle = portcullis_core::LogThrottle::new();
    if let Some(held_back) = THROTTLE.admit() {
        tracing::error!(
            target: "portcullis::audit",
            %error,
            held_back,
            "the audit file sink cannot write; events are lost until it can: check the disk's free space and the directory's permissions"
        );
    }
}

/// `<prefix>.jsonl`, renamed to `<prefix>.NNNNNN.jsonl` when the next line would make
/// it larger than the limit.
struct SizeRotating {
    directory: PathBuf,
    prefix: String,
    current: PathBuf,
    file: BufWriter<File>,
    size: u64,
    max: u64,
    next: u64,
}

impl SizeRotating {
    fn open(directory: &Path, prefix: &str, max: u64) -> io::Result<Self> {
        let current = directory.join(format!("{prefix}.jsonl"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)?;
        let size = file.metadata()?.len();
        let next = existing_numbers(directory, prefix).max().unwrap_or(0) + 1;
        Ok(Self {
            directory: directory.to_owned(),
            prefix: prefix.to_owned(),
            current,
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            max: max.max(1),
            next,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let full = self
            .directory
            .join(format!("{}.{:06}.jsonl", self.prefix, self.next));
        std::fs::rename(&self.current, full)?;
        self.next += 1;
        self.file = BufWriter::with_capacity(
            WRITE_BUFFER,
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.current)?,
        );
        self.size = 0;
        Ok(())
    }
}

fn existing_numbers<'a>(directory: &Path, prefix: &'a str) -> impl Iterator<Item = u64> + 'a {
    std::fs::read_dir(directory)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name
                .strip_prefix(prefix)?
                .strip_prefix('.')?
                .strip_suffix(".jsonl")?;
            number.parse().ok()
        })
}

impl Write for SizeRotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Called once per record with the whole line, so records never straddle files.
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        let written = self.file.write(buf)?;
        self.size += written as u64;
        Ok(written)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
