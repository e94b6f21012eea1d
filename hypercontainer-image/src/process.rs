//! Image config -> process defaults, with caller overrides applied in
//! Docker's precedence.

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// Errors from computing process defaults.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    /// Neither the image nor the caller gives a command.
    #[error("no command: the image has no Entrypoint/Cmd and none was given")]
    NoCommand,
    /// The working directory is not absolute.
    #[error("working directory {0:?} is not absolute")]
    RelativeWorkingDir(String),
    /// An environment entry has no name.
    #[error("invalid environment entry {0:?}")]
    InvalidEnv(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ProcessError>;

/// `PATH` used when neither the image nor the caller sets one (as Docker does).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the caller wants to change from the image's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessOverrides {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

impl ProcessOverrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the entrypoint. As in Docker, this also drops the image's
    /// Cmd (an empty list clears the entrypoint).
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Replaces the Cmd (arguments to the entrypoint, or the command).
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.cmd = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Sets an environment variable (wins over the image's value).
    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.env
            .push(format!("{}={}", key.as_ref(), value.as_ref()));
        self
    }

    /// Sets the working directory (must be absolute).
    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Sets the user (`name`, `uid`, `name:group`, `uid:gid`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// A user as written in an image config; names are resolved in the guest
/// against the image's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// User name or numeric uid.
    pub user: String,
    /// Group name or numeric gid, if given.
    pub group: Option<String>,
}

impl UserSpec {
    /// Parses `user[:group]`; empty means root.
    pub fn parse(s: &str) -> Self {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g.to_owned()).filter(|g| !g.is_empty())),
            None => (s, None),
        };
        UserSpec {
            user: if u.is_empty() { "0".into() } else { u.into() },
            group: g,
        }
    }
}

/// The process to start for an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDefaults {
    /// argv: Entrypoint followed by Cmd.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub working_dir: String,
    /// User to run as.
    pub user: UserSpec,
    /// Signal to stop the container with, if the image names one.
    pub stop_signal: Option<String>,
    /// Ports the image declares (`80/tcp`), sorted.
    pub exposed_ports: Vec<String>,
    /// Volume mount points the image declares, sorted.
    pub volumes: Vec<String>,
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// Merges an image config with caller overrides:
/// - an overriding entrypoint replaces the image's and resets its Cmd; an
///   overriding Cmd replaces the image's Cmd;
/// - env entries are merged by key, the caller winning; `PATH` defaults as in Docker;
/// - the working directory defaults to `/`, the user to root.
pub fn process_defaults(
    config: &ImageConfiguration,
    o: &ProcessOverrides,
) -> Result<ProcessDefaults> {
    let c = config.config().clone().unwrap_or_default();
    let (entrypoint, cmd) = match &o.entrypoint {
        Some(ep) => (ep.clone(), o.cmd.clone().unwrap_or_default()),
        None => (
            c.entrypoint().clone().unwrap_or_default(),
            o.cmd
                .clone()
                .or_else(|| c.cmd().clone())
                .unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand);
    }
    let mut env: Vec<String> = c.env().clone().unwrap_or_default();
    for e in &o.env {
        let key = env_key(e);
        if key.is_empty() {
            return Err(ProcessError::InvalidEnv(e.clone()));
        }
        match env.iter_mut().find(|x| env_key(x) == key) {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.push(DEFAULT_PATH.into());
    }
    let working_dir = o
        .working_dir
        .clone()
        .or_else(|| c.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !working_dir.starts_with('/') {
        return Err(ProcessError::RelativeWorkingDir(working_dir));
    }
    let user = UserSpec::parse(o.user.as_deref().or(c.user().as_deref()).unwrap_or(""));
    let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
    exposed_ports.sort();
    let mut volumes = c.volumes().clone().unwrap_or_default();
    volumes.sort();
    Ok(ProcessDefaults {
        args,
        env,
        working_dir,
        user,
        stop_signal: c.stop_signal().clone(),
        exposed_ports,
        volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    const IMG: &str = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
        "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","A=1","B=2"],
        "WorkingDir":"/home/u","User":"1000:1000","StopSignal":"SIGQUIT",
        "ExposedPorts":{"80/tcp":{},"53/udp":{}},"Volumes":{"/data":{}}}}"#;

    #[test]
    fn image_defaults() {
        let d = process_defaults(&config(IMG), &ProcessOverrides::new()).unwrap();
        assert_eq!(d.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(d.env, ["PATH=/bin", "A=1", "B=2"]);
        assert_eq!(d.working_dir, "/home/u");
        assert_eq!(
            d.user,
            UserSpec {
                user: "1000".into(),
                group: Some("1000".into())
            }
        );
        assert_eq!(d.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(d.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(d.volumes, ["/data"]);
    }

    #[test]
    fn docker_precedence() {
        let c = config(IMG);
        let d = process_defaults(&c, &ProcessOverrides::new().cmd(["echo bye"])).unwrap();
        assert_eq!(d.args, ["/bin/sh", "-c", "echo bye"]);
        let d = process_defaults(&c, &ProcessOverrides::new().entrypoint(["/bin/true"])).unwrap();
        assert_eq!(
            d.args,
            ["/bin/true"],
            "overriding the entrypoint resets Cmd"
        );
        let d = process_defaults(
            &c,
            &ProcessOverrides::new().entrypoint(["/bin/echo"]).cmd(["x"]),
        )
        .unwrap();
        assert_eq!(d.args, ["/bin/echo", "x"]);
        let d = process_defaults(
            &c,
            &ProcessOverrides::new()
                .entrypoint(Vec::<String>::new())
                .cmd(["ls"]),
        )
        .unwrap();
        assert_eq!(d.args, ["ls"]);
        assert_eq!(
            process_defaults(
                &c,
                &ProcessOverrides::new().entrypoint(Vec::<String>::new())
            ),
            Err(ProcessError::NoCommand)
        );
    }

    #[test]
    fn env_merge_and_validation() {
        let c = config(IMG);
        let d = process_defaults(&c, &ProcessOverrides::new().env("B", "x").env("C", "3")).unwrap();
        assert_eq!(d.env, ["PATH=/bin", "A=1", "B=x", "C=3"]);
        let bare = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["sh"]}}"#,
        );
        let d = process_defaults(&bare, &ProcessOverrides::new()).unwrap();
        assert_eq!(d.env, [DEFAULT_PATH]);
        assert_eq!(d.working_dir, "/");
        assert_eq!(
            d.user,
            UserSpec {
                user: "0".into(),
                group: None
            }
        );
        assert_eq!(
            process_defaults(&bare, &ProcessOverrides::new().working_dir("rel")),
            Err(ProcessError::RelativeWorkingDir("rel".into()))
        );
        assert_eq!(
            process_defaults(&bare, &ProcessOverrides::new().env("", "x")),
            Err(ProcessError::InvalidEnv("=x".into()))
        );
        let d = process_defaults(
            &c,
            &ProcessOverrides::new().user("nobody").working_dir("/tmp"),
        )
        .unwrap();
        assert_eq!(
            d.user,
            UserSpec {
                user: "nobody".into(),
                group: None
            }
        );
        assert_eq!(d.working_dir, "/tmp");
    }
}
