//! Resumable, verified blob downloads shared between pulls.
//!
//! Layout under the download directory (the store puts it at
//! `<store>/downloads`):
//!
//! ```text
//! locks/<alg>-<hex>.lock     held exclusively while a blob is fetched or released
//! partial/<alg>-<hex>        bytes received so far (resumed with HTTP Range)
//! blobs/<alg>-<hex>          complete blobs, verified by size and digest
//! ```
//!
//! A blob is streamed to its `partial/` file, hashed as it arrives (bytes
//! already there are hashed first when resuming), refused as soon as it
//! grows past its descriptor's size, and renamed into `blobs/` only once its
//! size and digest match. A bad blob is deleted, so nothing of it is ever
//! used. Pulls (threads or processes) that want the same blob serialize on
//! its `flock`: the first downloads it, the others find it complete (or
//! already in the image store) and move no bytes. A connection that breaks
//! mid-blob is retried from where it stopped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::transport::Transport;
use super::{lock, ClientOptions, LayerProgress, LayerState, PullTarget, RegistryError, Result};
use crate::digest::{Digest, DigestError, Hasher};
use crate::sys;

/// An flock held until dropped.
struct BlobLock(#[allow(dead_code)] File);

/// The download directory.
#[derive(Debug, Clone)]
pub(crate) struct Downloads {
    root: PathBuf,
}

/// What to fetch.
pub(crate) struct Wanted<'a> {
    pub digest: &'a Digest,
    pub size: u64,
    /// Called with the lock held: true when the blob is no longer needed
    /// (its layer is already in the image store).
    pub not_needed: &'a (dyn Fn() -> bool + Sync),
    /// Where to link the verified blob (inside the pull's layout).
    pub link_to: &'a Path,
    /// Attempts after a broken connection.
    pub retries: u32,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RegistryError {
    let path = path.to_owned();
    move |source| RegistryError::Io { op, path, source }
}

fn name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// Read buffer for blob bodies.
const CHUNK: usize = 256 << 10;

impl Downloads {
    /// Opens (creating) the download directory.
    pub(crate) fn open(root: &Path) -> Result<Downloads> {
        for d in ["locks", "partial", "blobs"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(Downloads {
            root: root.to_owned(),
        })
    }

    fn lock(&self, d: &Digest) -> Result<BlobLock> {
        let p = self.root.join("locks").join(format!("{}.lock", name(d)));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("opening lock", &p))?;
        sys::flock(f.as_raw_fd(), libc::LOCK_EX).map_err(io_err("locking", &p))?;
        Ok(BlobLock(f))
    }

    fn complete_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(name(d))
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(name(d))
    }

    /// Makes the verified blob available at `w.link_to`, downloading what
    /// is missing. Returns the state it ended in: `Cached` (not needed),
    /// `Shared` (another pull had fetched it) or `Verified` (downloaded).
    pub(crate) fn fetch(
        &self,
        t: &Transport,
        w: &Wanted<'_>,
        progress: &dyn Fn(LayerState, u64),
    ) -> Result<LayerState> {
        let _lock = self.lock(w.digest)?;
        if (w.not_needed)() {
            return Ok(LayerState::Cached);
        }
        let complete = self.complete_path(w.digest);
        let state = if complete.is_file() {
            LayerState::Shared
        } else {
            self.download(t, w, progress)?;
            LayerState::Verified
        };
        match fs::hard_link(&complete, w.link_to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("linking", w.link_to)(e)),
        }
        Ok(state)
    }

    /// Drops a complete blob once the store holds its layer.
    pub(crate) fn release(&self, d: &Digest) -> Result<()> {
        let _lock = self.lock(d)?;
        let p = self.complete_path(d);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &p)(e)),
            _ => Ok(()),
        }
    }

    fn download(
        &self,
        t: &Transport,
        w: &Wanted<'_>,
        progress: &dyn Fn(LayerState, u64),
    ) -> Result<()> {
        let partial = self.partial_path(w.digest);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(io_err("opening", &partial))?;
        let mut hasher = Hasher::new(w.digest.algorithm());
        let mut have =
            hash_existing(&mut file, &mut hasher, w.size).map_err(io_err("reading", &partial))?;
        if have > w.size {
            file.set_len(0).map_err(io_err("truncating", &partial))?;
            hasher = Hasher::new(w.digest.algorithm());
            have = 0;
        }
        let mut attempt = 0;
        while have < w.size {
            match self.receive(t, w, &mut file, &mut hasher, &mut have, progress) {
                Ok(()) => {}
                Err(Broken::Fatal(e)) => {
                    if matches!(e, RegistryError::Verify { .. }) {
                        let _ = fs::remove_file(&partial);
                    }
                    return Err(e);
                }
                Err(Broken::Retry(e)) if attempt < w.retries => {
                    attempt += 1;
                    log::info!(
                        "download of {} broke at {have} bytes ({e}); resuming",
                        w.digest
                    );
                }
                Err(Broken::Retry(e)) => return Err(e),
            }
        }
        let actual = hasher.finish();
        if let Err(source) = w.digest.check(actual) {
            let _ = fs::remove_file(&partial);
            return Err(RegistryError::Verify {
                what: format!("blob {}", w.digest),
                source,
            });
        }
        file.sync_all().map_err(io_err("syncing", &partial))?;
        let complete = self.complete_path(w.digest);
        fs::rename(&partial, &complete).map_err(io_err("publishing", &complete))?;
        Ok(())
    }

    /// One request: appends what arrives to `file`.
    fn receive(
        &self,
        t: &Transport,
        w: &Wanted<'_>,
        file: &mut File,
        hasher: &mut Hasher,
        have: &mut u64,
        progress: &dyn Fn(LayerState, u64),
    ) -> std::result::Result<(), Broken> {
        let partial = self.partial_path(w.digest);
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if *have > 0 {
            vec![("Range", range.as_str())]
        } else {
            Vec::new()
        };
        let what = format!("blob {}", w.digest);
        let resp = t
            .get(&format!("blobs/{}", w.digest), &headers, &what)
            .map_err(|e| match e {
                RegistryError::Unreachable { .. } => Broken::Retry(e),
                e => Broken::Fatal(e),
            })?;
        let resumed = resp.status() == 206
            && resp
                .header("content-range")
                .and_then(range_start)
                .is_some_and(|s| s == *have);
        if *have > 0 && !resumed {
            // The server sent the whole blob: start over.
            file.set_len(0)
                .map_err(|e| Broken::Fatal(io_err("truncating", &partial)(e)))?;
            *hasher = Hasher::new(w.digest.algorithm());
            *have = 0;
        }
        file.seek(SeekFrom::Start(*have))
            .map_err(|e| Broken::Fatal(io_err("seeking", &partial)(e)))?;
        progress(
            if *have > 0 {
                LayerState::Resumed { from: *have }
            } else {
                LayerState::Downloading
            },
            *have,
        );
        let mut body = resp.into_reader();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Broken::Retry(RegistryError::Unreachable {
                        registry: t.base().to_owned(),
                        reason: format!("reading {what}: {e}"),
                    }))
                }
            };
            if *have + n as u64 > w.size {
                return Err(Broken::Fatal(RegistryError::Verify {
                    what,
                    source: DigestError::SizeMismatch {
                        digest: w.digest.to_string(),
                        expected: w.size,
                        actual: *have + n as u64,
                    },
                }));
            }
            file.write_all(&buf[..n])
                .map_err(|e| Broken::Fatal(io_err("writing", &partial)(e)))?;
            hasher.update(&buf[..n]);
            *have += n as u64;
            progress(LayerState::Downloading, *have);
        }
        if *have < w.size {
            return Err(Broken::Retry(RegistryError::Unreachable {
                registry: t.base().to_owned(),
                reason: format!("{what} ended after {have} of {} bytes", w.size),
            }));
        }
        Ok(())
    }
}

/// Why a request ended early.
enum Broken {
    /// The connection broke: resume.
    Retry(RegistryError),
    /// Give up.
    Fatal(RegistryError),
}

/// Hashes the bytes a partial file already holds (at most `limit + 1`).
fn hash_existing(file: &mut File, hasher: &mut Hasher, limit: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    io::copy(&mut (&mut *file).take(limit + 1), hasher)
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One layer to fetch: manifest index, blob digest, size, diff_id.
pub(crate) type Job = (usize, Digest, u64, Digest);

/// Fetches `todo` with at most `opts.jobs` threads, linking each blob into
/// the layout's `blobs/`; returns the digests that were downloaded or shared (not those
/// the store already had). The first error stops the other threads after
/// their current blob.
pub(crate) fn fetch_parallel(
    downloads: &Downloads,
    t: &Transport,
    todo: &[Job],
    blobs: &Path,
    target: &PullTarget<'_>,
    opts: &ClientOptions,
) -> Result<Vec<Digest>> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<RegistryError>> = Mutex::new(None);
    let fetched: Mutex<Vec<Digest>> = Mutex::new(Vec::new());
    let report = |p: &LayerProgress| {
        if let Some(f) = &opts.progress {
            f(p)
        }
    };
    let worker = || loop {
        if lock(&failed).is_some() {
            return;
        }
        let Some((index, digest, size, diff_id)) = todo.get(next.fetch_add(1, Ordering::Relaxed))
        else {
            return;
        };
        let mut p = LayerProgress::new(*index, digest, *size);
        report(&p);
        let link = match super::layout_blob_path(blobs, digest) {
            Ok(l) => l,
            Err(e) => {
                lock(&failed).get_or_insert(e);
                return;
            }
        };
        let not_needed = || (target.have_layer)(diff_id);
        let w = Wanted {
            digest,
            size: *size,
            not_needed: &not_needed,
            link_to: &link,
            retries: opts.retries,
        };
        let on_progress = |state: LayerState, done: u64| {
            let p = LayerProgress {
                done,
                state,
                ..LayerProgress::new(*index, digest, *size)
            };
            report(&p);
        };
        match downloads.fetch(t, &w, &on_progress) {
            Ok(state) => {
                if state != LayerState::Cached {
                    lock(&fetched).push(digest.clone());
                    p.done = *size;
                }
                p.state = state;
                report(&p);
            }
            Err(e) => {
                lock(&failed).get_or_insert(e);
                return;
            }
        }
    };
    std::thread::scope(|s| {
        let n = opts.jobs.min(todo.len()).max(1);
        let handles: Vec<_> = (0..n)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("pull-{i}"))
                    .spawn_scoped(s, worker)
            })
            .collect();
        for h in handles {
            match h {
                Ok(h) => {
                    if h.join().is_err() {
                        lock(&failed).get_or_insert(RegistryError::Io {
                            op: "downloading (a download thread panicked)",
                            path: target.downloads.to_owned(),
                            source: std::io::Error::other("panic"),
                        });
                    }
                }
                // Could not spawn: the threads that did run finish the list.
                Err(e) => log::warn!("cannot start a download thread: {e}"),
            }
        }
    });
    // If no thread could start, do the work here.
    if next.load(Ordering::Relaxed) < todo.len() && lock(&failed).is_none() {
        worker();
    }
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    let out = std::mem::take(&mut *lock(&fetched));
    Ok(out)
}

impl LayerProgress {
    pub(crate) fn new(index: usize, digest: &Digest, total: u64) -> LayerProgress {
        LayerProgress {
            index,
            digest: digest.clone(),
            total,
            done: 0,
            state: LayerState::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
