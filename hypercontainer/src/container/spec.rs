//! [`ContainerSpec`]: what one container of a pod runs, and how it is
//! confined.

use hypercontainer_image::ProcessOverrides;
use hypercontainer_protocol::WindowSize;

use crate::sandbox::{Error, ImageRef, Limits, Output, Result, Seccomp, Tmpfs};
use crate::spec::{ContainerOptions, Ulimit};
use crate::volume::Volume;

/// A container to create in a [`Pod`](crate::pod::Pod): its image, its
/// process (the image's defaults with these overrides, Docker's rules),
/// stdio, volumes and confinement. Give it to
/// [`Pod::create`](crate::pod::Pod::create).
///
/// ```
/// use hypercontainer::container::ContainerSpec;
/// use hypercontainer::sandbox::Limits;
///
/// let limits = Limits {
///     memory: Some(64 << 20),
///     ..Limits::default()
/// };
/// let spec = ContainerSpec::new("busybox".parse().unwrap())
///     .name("web")
///     .cmd(["httpd", "-f", "-p", "8080"])
///     .env("MODE", "test")
///     .limits(limits);
/// ```
#[derive(Debug)]
pub struct ContainerSpec {
    pub(crate) image: ImageRef,
    pub(crate) name: Option<String>,
    pub(crate) overrides: ProcessOverrides,
    pub(crate) stdin: bool,
    pub(crate) tty: Option<WindowSize>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    pub(crate) options: ContainerOptions,
    pub(crate) volumes: Vec<Volume>,
    pub(crate) rootfs_writable: bool,
}

impl ContainerSpec {
    /// A container of `image`, running the image's own command.
    pub fn new(image: ImageRef) -> Self {
        Self {
            image,
            name: None,
            overrides: ProcessOverrides::new(),
            stdin: false,
            tty: None,
            stdout: Output::Piped,
            stderr: Output::Piped,
            options: ContainerOptions::default(),
            volumes: Vec::new(),
            rootfs_writable: false,
        }
    }

    /// The container's name, unique in its pod (default: `c` and its id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces the image's entrypoint (and drops its Cmd, as Docker does).
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.overrides = self.overrides.entrypoint(argv);
        self
    }

    /// Replaces the image's Cmd (the command, or the entrypoint's arguments).
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.overrides = self.overrides.cmd(argv);
        self
    }

    /// Sets an environment variable (wins over the image's).
    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.overrides = self.overrides.env(key, value);
        self
    }

    /// Sets the working directory (absolute).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.overrides = self.overrides.working_dir(dir);
        self
    }

    /// Sets the user (`name`, `uid`, `name:group`, `uid:gid`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.overrides = self.overrides.user(user);
        self
    }

    /// Keep the main process's stdin open (default: it sees end of file).
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// Run the main process on a terminal of `rows` x `cols`.
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(WindowSize { rows, cols });
        self
    }

    /// Where the main process's stdout goes (default [`Output::Piped`]).
    pub fn stdout(mut self, out: Output) -> Self {
        self.stdout = out;
        self
    }

    /// Where the main process's stderr goes (default [`Output::Piped`]).
    pub fn stderr(mut self, out: Output) -> Self {
        self.stderr = out;
        self
    }

    /// How the container is confined, all at once (default: Docker's).
    pub fn container_options(mut self, options: ContainerOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a capability (`--cap-add`; `ALL` for all).
    pub fn cap_add(mut self, cap: impl Into<String>) -> Self {
        self.options.cap_add.push(cap.into());
        self
    }

    /// Drops a capability (`--cap-drop`; `ALL` for all).
    pub fn cap_drop(mut self, cap: impl Into<String>) -> Self {
        self.options.cap_drop.push(cap.into());
        self
    }

    /// The seccomp filter (default [`Seccomp::Default`]).
    pub fn seccomp(mut self, seccomp: Seccomp) -> Self {
        self.options.seccomp = seccomp;
        self
    }

    /// Mounts the root filesystem read-only (`--read-only`).
    pub fn read_only(mut self, on: bool) -> Self {
        self.options.read_only = on;
        self
    }

    /// Adds a tmpfs mount (`--tmpfs`).
    pub fn tmpfs(mut self, tmpfs: Tmpfs) -> Self {
        self.options.tmpfs.push(tmpfs);
        self
    }

    /// cgroup limits of the container (memory, CPU, pids).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }

    /// Sets a resource limit of every process (`--ulimit`).
    pub fn ulimit(mut self, ulimit: Ulimit) -> Self {
        self.options.ulimits.push(ulimit);
        self
    }

    /// Mounts a host directory or named volume into this container only
    /// (`-v`); see [`crate::volume`].
    pub fn volume(mut self, volume: Volume) -> Self {
        self.volumes.push(volume);
        self
    }

    /// With a `dir:` image: write to the directory itself (see
    /// [`SandboxBuilder::rootfs_writable`](crate::SandboxBuilder::rootfs_writable)).
    pub fn rootfs_writable(mut self, on: bool) -> Self {
        self.rootfs_writable = on;
        self
    }

    /// Checks what can be checked without the pod.
    pub(crate) fn validate(&self, pod_volumes: &[&str]) -> Result<()> {
        if let Some(n) = &self.name {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if n.is_empty() || n.len() > 128 || !n.chars().all(ok) {
                return Err(Error::Config(format!(
                    "container name {n:?} must be 1 to 128 characters of [A-Za-z0-9_.-]"
                )));
            }
        }
        for v in &self.volumes {
            v.validate()?;
        }
        crate::volume::check_unique(
            pod_volumes
                .iter()
                .copied()
                .chain(self.volumes.iter().map(Volume::destination))
                .chain(self.options.tmpfs.iter().map(|t| t.path.as_str()))
                // A bad tmpfs path is the spec's error, reported later.
                .filter(|p| crate::volume::normalize_destination(p).is_ok()),
        )?;
        Ok(())
    }
}
