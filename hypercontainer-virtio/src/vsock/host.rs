//! The host side of the vsock device: connect to guest ports and accept
//! guest-initiated connections. Both hand out a [`UnixStream`]; the device
//! relays between the other end of that stream and the guest.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::debug;
use vmm_sys_util::eventfd::EventFd;

/// A connection the host asked for, on its way to the event loop.
pub(crate) struct ConnectRequest {
    pub port: u32,
    pub stream: UnixStream,
    pub reply: mpsc::Sender<io::Result<()>>,
}

/// An accepted guest connection: the host's end and the guest's port.
pub(crate) type Accepted = (UnixStream, u32);

pub(crate) struct HostShared {
    pub requests: Mutex<VecDeque<ConnectRequest>>,
    pub listeners: Mutex<HashMap<u32, SyncSender<Accepted>>>,
    pub evt: EventFd,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Host-side handle of a [`super::Vsock`] device; cheap to clone, usable
/// from any thread except the device's event-loop thread (whose progress
/// [`VsockHost::connect`] waits for).
#[derive(Clone)]
pub struct VsockHost {
    pub(crate) shared: Arc<HostShared>,
}

impl std::fmt::Debug for VsockHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockHost").finish_non_exhaustive()
    }
}

impl VsockHost {
    /// Connect to `port` in the guest, waiting up to `timeout` for the
    /// guest to accept. Fails with `ConnectionRefused` when nothing listens
    /// there, `NotConnected` when the device is not active, `TimedOut` when
    /// the guest does not answer.
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let (user, device) = UnixStream::pair()?;
        device.set_nonblocking(true)?;
        let (reply, result) = mpsc::channel();
        lock(&self.shared.requests).push_back(ConnectRequest {
            port,
            stream: device,
            reply,
        });
        self.shared.evt.write(1)?;
        match result.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(user),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "guest did not answer the connection request",
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "vsock device dropped the request",
            )),
        }
    }

    /// Accept guest connections to host port `port`. At most `backlog`
    /// accepted connections wait for [`VsockListener::accept`]; beyond that
    /// the guest's requests are reset.
    pub fn listen(&self, port: u32, backlog: usize) -> io::Result<VsockListener> {
        let mut listeners = lock(&self.shared.listeners);
        if listeners.contains_key(&port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("vsock port {port} already has a listener"),
            ));
        }
        let (tx, rx) = mpsc::sync_channel(backlog.max(1));
        listeners.insert(port, tx);
        Ok(VsockListener {
            port,
            incoming: rx,
            shared: self.shared.clone(),
        })
    }
}

/// Accepts guest connections to one host port; stops listening on drop.
pub struct VsockListener {
    port: u32,
    incoming: Receiver<Accepted>,
    shared: Arc<HostShared>,
}

impl std::fmt::Debug for VsockListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockListener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl VsockListener {
    /// The host port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Wait up to `timeout` for a guest connection; returns the host's end
    /// of the stream and the guest's source port.
    pub fn accept(&self, timeout: Duration) -> io::Result<(UnixStream, u32)> {
        self.incoming.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                io::Error::new(io::ErrorKind::TimedOut, "no guest connection")
            }
            RecvTimeoutError::Disconnected => {
                io::Error::new(io::ErrorKind::NotConnected, "listener closed")
            }
        })
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        lock(&self.shared.listeners).remove(&self.port);
    }
}

pub(crate) fn log_reply(reply: &mpsc::Sender<io::Result<()>>, result: io::Result<()>) {
    if reply.send(result).is_err() {
        debug!("vsock: connect caller went away");
    }
}
