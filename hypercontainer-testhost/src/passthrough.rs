//! Passthrough jobs' stdout in the emulated host: the init script sends
//! it to the host's second serial port ([`PASSTHROUGH_PORT`], in raw mode
//! so no byte is translated), QEMU writes that port to a file, and a
//! [`StdoutCopier`] thread copies the file to this process's stdout as it
//! grows. The console (the first port) keeps carrying everything else, the
//! job's stderr included, so the two streams never mix.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The emulated host's device for passthrough jobs' stdout.
pub const PASSTHROUGH_PORT: &str = "/dev/ttyS1";

/// Copies a growing file to stdout until dropped (then copies the rest).
pub struct StdoutCopier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StdoutCopier {
    /// Starts copying `path` (which exists) from its start to stdout.
    pub fn start(path: &Path) -> Option<Self> {
        Self::start_to(path, std::io::stdout())
    }

    /// Starts copying `path` (which exists) from its start to `out`.
    pub fn start_to(path: &Path, mut out: impl Write + Send + 'static) -> Option<Self> {
        let mut file = File::open(path).ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("testhost-stdout".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Read the stop flag first: a read to end of file after
                    // it was set has everything QEMU wrote.
                    let last = flag.load(Ordering::Acquire);
                    loop {
                        match file.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let _ = out.write_all(&buf[..n]);
                            }
                        }
                    }
                    let _ = out.flush();
                    if last {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StdoutCopier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copies_every_byte_written_before_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        let mut f = File::create(&p).unwrap();
        let sink = Shared::default();
        let c = StdoutCopier::start_to(&p, sink.clone()).expect("started");
        f.write_all(b"partial line, no newline").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        f.write_all(b"\x00\xff\r\n end").unwrap();
        drop(c);
        assert_eq!(
            &sink.0.lock().unwrap()[..],
            b"partial line, no newline\x00\xff\r\n end"
        );
    }
}
