//! One process of a connection: its handle, output readers and stdin.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercontainer_protocol::{
    ErrorKind, Message, ProcessId, WindowSize, MAX_DATA_CHUNK, STDIN_WINDOW,
};

use super::{error_chain, send, Error, Proc, Result, Shared, Stream, Writer};

/// One process of a connection: its stdio, signals and exit status.
/// Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ProcessHandle {
    pub(super) id: ProcessId,
    pub(super) shared: Arc<Shared>,
    pub(super) writer: Writer,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ProcessHandle {
    /// The protocol's id of this process.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    fn with<T>(&self, f: impl FnOnce(&mut Proc) -> T) -> Option<T> {
        self.shared.lock().procs.get_mut(&self.id).map(f)
    }

    /// The process's pid in the guest, once it started.
    pub fn pid(&self) -> Option<u32> {
        self.with(|p| p.pid).flatten()
    }

    /// When the host learned that the process started.
    pub fn started_at(&self) -> Option<Instant> {
        self.with(|p| p.started).flatten()
    }

    /// When the first output byte of the process arrived.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.with(|p| p.first_output).flatten()
    }

    /// The exit status, if the process ended.
    pub fn try_status(&self) -> Option<i32> {
        self.with(|p| p.exit).flatten()
    }

    /// Waits up to `timeout` (`None`: forever) until the process started
    /// (its pid) or failed to start ([`Error::Spawn`]).
    pub fn wait_started(&self, timeout: Option<Duration>) -> Result<Option<u32>> {
        self.wait_for(timeout, |p| {
            if let Some(pid) = p.pid {
                Some(Ok(pid))
            } else if let Some((kind, message)) = &p.error {
                Some(Err(Error::Spawn {
                    kind: *kind,
                    message: message.clone(),
                    status: p.exit.unwrap_or(kind.exit_status()),
                }))
            } else {
                p.exit.map(|status| {
                    Err(Error::Spawn {
                        kind: ErrorKind::Spawn,
                        message: format!("the process ended with {status} before starting"),
                        status,
                    })
                })
            }
        })
    }

    /// Waits for the process to end; returns its exit status (the exit
    /// code, 128 + signal, or 125-127 when it failed to start; see
    /// [`Self::start_error`]).
    pub fn wait(&self) -> Result<i32> {
        self.wait_for(None, |p| p.exit.map(Ok))
            .map(|s| s.expect("no timeout"))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.wait_for(Some(timeout), |p| p.exit.map(Ok))
    }

    /// Whether the kernel's OOM killer ended the process (its exit status is
    /// then 137); `false` while it runs.
    pub fn oom_killed(&self) -> bool {
        self.with(|p| p.oom_killed).unwrap_or(false)
    }

    /// Why the process failed to start, if it did.
    pub fn start_error(&self) -> Option<(ErrorKind, String)> {
        self.with(|p| p.error.clone()).flatten()
    }

    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&Proc) -> Option<Result<T>>,
    ) -> Result<Option<T>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.shared.lock();
        loop {
            let Some(p) = g.procs.get(&self.id) else {
                return Err(Error::Disconnected(format!("no process {}", self.id)));
            };
            if let Some(r) = f(p) {
                return r.map(Some);
            }
            if let Some(why) = &g.ended {
                return Err(Error::Disconnected(why.clone()));
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
            };
            g = self.shared.wait(g, left);
        }
    }

    /// Sends `signal` (a Linux signal number) to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        send(
            &self.writer,
            &self.shared,
            &Message::Signal {
                id: self.id,
                signal,
            },
        )
    }

    /// Resizes the process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        send(
            &self.writer,
            &self.shared,
            &Message::ResizeTty {
                id: self.id,
                size: WindowSize { rows, cols },
            },
        )
    }

    /// Ends the process's stdin (after what was written). Idempotent.
    pub fn close_stdin(&self) -> Result<()> {
        let first = self
            .with(|p| !std::mem::replace(&mut p.stdin_closed, true))
            .unwrap_or(false);
        if first {
            send(
                &self.writer,
                &self.shared,
                &Message::CloseStdin { id: self.id },
            )?;
        }
        Ok(())
    }

    /// A writer for the process's stdin (blocking on the protocol's credit
    /// window). Several writers of one process interleave their writes.
    pub fn stdin(&self) -> StdinWriter {
        StdinWriter {
            handle: self.clone(),
        }
    }

    fn take_stream(&self, which: usize) -> Result<OutputReader> {
        let name = if which == 0 { "stdout" } else { "stderr" };
        let ok = self
            .with(|p| match &mut p.streams[which] {
                Stream::Buffer { taken, .. } if !*taken => {
                    *taken = true;
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if ok {
            Ok(OutputReader {
                handle: self.clone(),
                which,
            })
        } else {
            Err(Error::StreamUnavailable(name))
        }
    }

    /// The reader of a piped stdout; once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.take_stream(0)
    }

    /// The reader of a piped stderr; once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.take_stream(1)
    }

    /// Everything buffered so far on a piped stream (without taking it).
    pub fn drain(&self, stderr: bool) -> Vec<u8> {
        self.with(|p| match &mut p.streams[usize::from(stderr)] {
            Stream::Buffer { data, .. } => data.drain(..).collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default()
    }
}

/// Reads a process's piped stdout or stderr; end of file when the process
/// ended (or the connection did).
#[derive(Debug)]
pub struct OutputReader {
    handle: ProcessHandle,
    which: usize,
}

impl Read for OutputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let shared = &self.handle.shared;
        let mut g = shared.lock();
        loop {
            let ended = g.ended.is_some();
            let Some(p) = g.procs.get_mut(&self.handle.id) else {
                return Ok(0);
            };
            let done = p.exit.is_some();
            if let Stream::Buffer { data, .. } = &mut p.streams[self.which] {
                if !data.is_empty() {
                    let n = buf.len().min(data.len());
                    for (dst, src) in buf.iter_mut().zip(data.drain(..n)) {
                        *dst = src;
                    }
                    return Ok(n);
                }
            } else {
                return Ok(0);
            }
            if done || ended {
                return Ok(0);
            }
            g = shared.wait(g, None);
        }
    }
}

/// Writes a process's stdin; see [`ProcessHandle::stdin`]. Dropping it does
/// not close stdin: call [`StdinWriter::close`].
#[derive(Debug)]
pub struct StdinWriter {
    handle: ProcessHandle,
}

impl StdinWriter {
    /// Ends the process's stdin.
    pub fn close(self) -> Result<()> {
        self.handle.close_stdin()
    }
}

impl Write for StdinWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = &self.handle;
        let n = {
            let mut g = h.shared.lock();
            loop {
                if let Some(why) = &g.ended {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
                }
                let Some(p) = g.procs.get_mut(&h.id) else {
                    return Err(io::ErrorKind::BrokenPipe.into());
                };
                if p.exit.is_some() || p.stdin_closed {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the process ended or its stdin is closed",
                    ));
                }
                let credit = STDIN_WINDOW.saturating_sub(p.unacked) as usize;
                if credit > 0 {
                    let n = buf.len().min(credit).min(MAX_DATA_CHUNK);
                    p.unacked += n as u32;
                    break n;
                }
                g = h.shared.wait(g, None);
            }
        };
        send(
            &h.writer,
            &h.shared,
            &Message::Stdin {
                id: h.id,
                data: buf[..n].to_vec(),
            },
        )
        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, error_chain(&e)))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
