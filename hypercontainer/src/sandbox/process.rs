//! Extra processes of a running sandbox: what to run ([`Exec`]) and the
//! handle ([`Process`]).

use std::time::Duration;

use hypercontainer_protocol::{Process as ProtoProcess, WindowSize};

use super::{agent_err, Output, Result};
use crate::agent_client::{OutputReader, ProcessHandle, StdinWriter};

/// A process to run in a running sandbox ([`Sandbox::exec`](super::Sandbox::exec)). Defaults
/// come from the main process: environment, working directory, user.
#[derive(Debug)]
pub struct Exec {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) tty: Option<WindowSize>,
    pub(crate) stdin: bool,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
}

impl Exec {
    /// The process to send: `template` (the main process) with this
    /// command's settings.
    pub(crate) fn process(&self, template: &ProtoProcess) -> super::Result<ProtoProcess> {
        let mut p = template.clone();
        p.argv = self.argv.clone();
        if p.argv.is_empty() {
            return Err(super::Error::Config("exec needs a command".into()));
        }
        for e in &self.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string();
            p.env
                .retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
            p.env.push(e.clone());
        }
        if let Some(c) = &self.cwd {
            p.cwd = c.clone();
        }
        if let Some(u) = &self.user {
            p.user = u.clone();
        }
        p.terminal = self.tty.is_some();
        p.window = self.tty;
        Ok(p)
    }

    /// `argv[0]` is looked up in the container's `PATH`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Self {
        Exec {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            user: None,
            tty: None,
            stdin: false,
            stdout: Output::Piped,
            stderr: Output::Piped,
        }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.env
            .push(format!("{}={}", key.as_ref(), value.as_ref()));
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Runs on a terminal of `rows` x `cols`.
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(WindowSize { rows, cols });
        self
    }

    /// Keeps stdin open for [`Process::stdin`].
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// Where stdout goes (default piped).
    pub fn stdout(mut self, out: Output) -> Self {
        self.stdout = out;
        self
    }

    /// Where stderr goes (default piped).
    pub fn stderr(mut self, out: Output) -> Self {
        self.stderr = out;
        self
    }
}

/// A process started by [`Sandbox::exec`](super::Sandbox::exec). `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Process {
    pub(crate) handle: ProcessHandle,
}

impl Process {
    /// Its pid in the guest.
    pub fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    /// Its stdout (when piped); once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.handle.stdout().map_err(agent_err)
    }

    /// Its stderr (when piped); once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.handle.stderr().map_err(agent_err)
    }

    /// A writer for its stdin.
    pub fn stdin(&self) -> StdinWriter {
        self.handle.stdin()
    }

    /// Ends its stdin.
    pub fn close_stdin(&self) -> Result<()> {
        self.handle.close_stdin().map_err(agent_err)
    }

    /// Sends a signal.
    pub fn kill(&self, signal: i32) -> Result<()> {
        self.handle.signal(signal).map_err(agent_err)
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.handle.resize(rows, cols).map_err(agent_err)
    }

    /// Waits for it to end: exit code or 128 + signal.
    pub fn wait(&self) -> Result<i32> {
        self.handle.wait().map_err(agent_err)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.handle.wait_timeout(timeout).map_err(agent_err)
    }
}
