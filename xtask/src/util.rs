//! Small helpers shared by the xtask commands: errors, stage lines, commands.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

/// Errors of the xtask commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed; the message says which and why.
    #[error("{0}")]
    Failed(String),
    /// An I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The emulated KVM host or a direct job run failed.
    #[error("test host")]
    TestHost(#[source] hypercontainer_testhost::Error),
    /// The SDK's kernel discovery failed.
    #[error("kernel location")]
    Kernel(#[source] hypercontainer::kernel::KernelError),
}

/// Result alias of the xtask commands.
pub type Result<T> = std::result::Result<T, Error>;

impl From<hypercontainer_testhost::Error> for Error {
    fn from(e: hypercontainer_testhost::Error) -> Self {
        Error::TestHost(e)
    }
}

impl From<hypercontainer::kernel::KernelError> for Error {
    fn from(e: hypercontainer::kernel::KernelError) -> Self {
        Error::Kernel(e)
    }
}

/// Builds an [`Error::Failed`].
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Failed(msg.into()))
}

/// Adds context to an I/O result.
pub trait IoContext<T> {
    /// Names what was being done when the I/O error happened.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// Prints the full chain of an error.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// A named step with a start time; prints `==> name` and `<== name (Ns)`.
pub struct Stage {
    name: String,
    start: Instant,
}

impl Stage {
    /// Starts a stage and prints its first line.
    pub fn start(name: impl Into<String>) -> Self {
        let name = name.into();
        eprintln!("==> {name}");
        Stage {
            name,
            start: Instant::now(),
        }
    }

    /// Seconds since the stage started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints a progress line inside the stage.
    pub fn note(&self, msg: impl AsRef<str>) {
        eprintln!("    [{:>6.1}s] {}", self.elapsed(), msg.as_ref());
    }

    /// Prints the closing line with the outcome.
    pub fn finish(self, ok: bool) -> f64 {
        let secs = self.elapsed();
        eprintln!(
            "<== {} {} ({secs:.1}s)",
            self.name,
            if ok { "ok" } else { "FAILED" }
        );
        secs
    }
}

/// Renders a command for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdin and stderr; fails on a non-zero exit.
///
/// The command's stdout goes to our stderr: xtask's own stdout belongs to
/// what `cargo xtask run` runs (a container's output), never to set-up
/// steps such as `apt-get`.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = status(cmd)?;
    if status.success() {
        Ok(())
    } else {
        fail(format!("`{}` failed: {status}", show(cmd)))
    }
}

/// Runs a command with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().ctx(|| format!("cannot run `{}`", show(cmd)))
}

/// Runs a command and returns its stdout; fails on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("cannot run `{}`", show(cmd)))?;
    if !out.status.success() {
        return fail(format!(
            "`{}` failed: {}\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

/// The `cargo` to invoke for nested builds.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root());
    cmd
}

/// Finds an executable on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Number of CPUs to build with.
pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
