//! The serial console (a 16550 UART from vm-superio at 0x3f8, IRQ 4) and
//! the i8042 controller whose reset command ends the VM.
//!
//! Console output goes to a caller-provided [`ConsoleSink`] and into a
//! bounded [`ConsoleTail`] of the last lines, kept for error reports (for
//! example the lines of a guest kernel panic).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Where console output goes.
///
/// Ready-made sinks: any [`Write`] through [`WriterSink`] (stdout, a file,
/// a `Vec<u8>`), and a channel of byte chunks through
/// `std::sync::mpsc::Sender<Vec<u8>>`. The builder has one-call helpers
/// for both (`console_writer`, `console_channel`).
pub trait ConsoleSink: Send {
    /// Receives bytes the guest wrote to its console, in order. Called on a
    /// vCPU thread: do not block for long.
    fn write(&mut self, bytes: &[u8]);
}

/// A [`ConsoleSink`] over any writer. Write errors are ignored: a broken
/// console must not stop the guest.
#[derive(Debug)]
pub struct WriterSink<W: Write + Send>(pub W);

impl<W: Write + Send> ConsoleSink for WriterSink<W> {
    fn write(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes);
        let _ = self.0.flush();
    }
}

impl ConsoleSink for Sender<Vec<u8>> {
    fn write(&mut self, bytes: &[u8]) {
        // A dropped receiver only means nobody listens any more.
        let _ = self.send(bytes.to_vec());
    }
}

/// A writer that starts every line with the host time elapsed since it was
/// created, for tracing where a boot spends its time (the guest kernel's
/// own timestamps run on the guest's clock).
///
/// ```
/// use std::io::Write;
/// use hypercontainer::vmm::console::Timestamped;
///
/// let mut out = Timestamped::new(Vec::new());
/// out.write_all(b"one\ntw").unwrap();
/// out.write_all(b"o\n").unwrap();
/// let text = String::from_utf8(out.into_inner()).unwrap();
/// let lines: Vec<&str> = text.lines().collect();
/// assert_eq!(lines.len(), 2);
/// assert!(lines[0].starts_with("[host ") && lines[0].ends_with("] one"));
/// assert!(lines[1].ends_with("] two"));
/// ```
#[derive(Debug)]
pub struct Timestamped<W> {
    inner: W,
    start: std::time::Instant,
    line_start: bool,
}

impl<W: Write> Timestamped<W> {
    /// Stamps lines written to `inner` with the time since now.
    pub fn new(inner: W) -> Self {
        Self::since(inner, std::time::Instant::now())
    }

    /// Stamps lines written to `inner` with the time since `start`.
    pub fn since(inner: W, start: std::time::Instant) -> Self {
        Self {
            inner,
            start,
            line_start: true,
        }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Timestamped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.line_start {
                let t = self.start.elapsed().as_secs_f64();
                write!(self.inner, "[host {t:8.3}] ")?;
            }
            self.inner.write_all(line)?;
            self.line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sink that drops everything (the tail is still kept).
#[derive(Debug, Default)]
pub struct NullSink;

impl ConsoleSink for NullSink {
    fn write(&mut self, _bytes: &[u8]) {}
}

/// The marker Linux prints when it panics.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Longest line kept in the tail; longer lines are cut.
const MAX_LINE: usize = 512;

/// The last lines of console output.
#[derive(Debug)]
pub struct ConsoleTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    max_lines: usize,
}

impl ConsoleTail {
    /// Keeps at most `max_lines` complete lines.
    pub fn new(max_lines: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(max_lines.min(256)),
            partial: Vec::new(),
            max_lines,
        }
    }

    /// Feeds output; calls `on_line` for every line it completes.
    fn push(&mut self, bytes: &[u8], mut on_line: impl FnMut(&str)) {
        for &b in bytes {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    on_line(&line);
                    if self.max_lines > 0 {
                        if self.lines.len() == self.max_lines {
                            self.lines.pop_front();
                        }
                        self.lines.push_back(line);
                    }
                }
                b'\r' => {}
                _ if self.partial.len() < MAX_LINE => self.partial.push(b),
                _ => {}
            }
        }
    }

    /// The kept lines, oldest first, plus the unfinished last line if any.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            out.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        out
    }
}

/// State shared between the console device and the VM.
#[derive(Debug)]
pub struct ConsoleState {
    /// The last lines of output.
    pub tail: Mutex<ConsoleTail>,
    /// Set once the guest printed [`PANIC_MARKER`].
    pub panicked: AtomicBool,
}

impl ConsoleState {
    /// Fresh state keeping `lines` lines.
    pub fn new(lines: usize) -> Self {
        Self {
            tail: Mutex::new(ConsoleTail::new(lines)),
            panicked: AtomicBool::new(false),
        }
    }

    /// A copy of the tail.
    pub fn lines(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines()
    }
}

/// The writer behind the UART: sink + tail + panic detection.
struct ConsoleOut {
    sink: Box<dyn ConsoleSink>,
    state: Arc<ConsoleState>,
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write(buf);
        let state = &self.state;
        state
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf, |line| {
                if line.contains(PANIC_MARKER) {
                    state.panicked.store(true, Ordering::SeqCst);
                }
            });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raises an IRQ line by writing to an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The 16550 UART as a bus device (8 ports).
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleOut>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink` and `state`.
    pub fn new(irq: EventFd, sink: Box<dyn ConsoleSink>, state: Arc<ConsoleState>) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), ConsoleOut { sink, state }),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0..=7, [b]) => *b = self.serial.read(offset as u8),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0..=7, [b]) = (offset, data) {
            // An interrupt or sink error cannot be reported to the guest;
            // the byte is dropped like on a broken line.
            let _ = self.serial.write(offset as u8, *b);
        }
    }
}

/// Calls a closure when the guest asks the i8042 to reset the CPU.
pub struct ResetTrigger(pub Box<dyn Fn() + Send>);

impl Trigger for ResetTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        (self.0)();
        Ok(())
    }
}

/// The i8042 controller (ports 0x60-0x64): only the CPU reset command
/// (0xFE to port 0x64) does anything.
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0..=4, [b]) => *b = self.0.read(offset as u8),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0..=4, [b]) = (offset, data) {
            let _ = self.0.write(offset as u8, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn tail_keeps_last_lines_and_spots_panics() {
        let state = Arc::new(ConsoleState::new(2));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = ConsoleOut {
            sink: Box::new(tx),
            state: state.clone(),
        };
        out.write_all(b"one\r\ntwo\nthree\nfour").unwrap();
        assert_eq!(state.lines(), vec!["two", "three", "four"]);
        assert!(!state.panicked.load(Ordering::SeqCst));
        out.write_all(b"\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert!(state.panicked.load(Ordering::SeqCst));
        let got: Vec<u8> = rx.try_iter().flatten().collect();
        assert!(got.starts_with(b"one\r\ntwo"));
        // Very long lines are cut, not grown without bound.
        out.write_all(&vec![b'x'; 10 * MAX_LINE]).unwrap();
        assert_eq!(state.lines().last().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn serial_transmits_to_sink_and_raises_irq() {
        let state = Arc::new(ConsoleState::new(4));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl ConsoleSink for Shared {
            fn write(&mut self, b: &[u8]) {
                self.0.lock().unwrap().extend_from_slice(b)
            }
        }
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            Box::new(Shared(buf.clone())),
            state.clone(),
        );
        dev.write(1, &[0x02]); // IER: transmitter empty interrupt
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(state.lines(), vec!["hi"]);
        // Odd sizes and offsets are ignored, never a panic.
        dev.write(9, &[1]);
        dev.write(0, &[1, 2]);
        let mut two = [0xffu8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0, 0]);
    }

    #[test]
    fn i8042_reset_command() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mut dev = I8042(I8042Device::new(ResetTrigger(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }))));
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let mut b = [0xffu8];
        dev.read(4, &mut b);
        assert_eq!(b, [0]);
    }
}
