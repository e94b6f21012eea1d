//! The exit status a front end reports for a sandbox error, as Docker's
//! CLI does: one function shared by every front end.

use super::Error;

impl Error {
    /// The exit status `docker run` gives for this error: 127 when the
    /// executable was not found, 126 when it could not be executed
    /// (permission denied, a directory), 125 for every other failure (the
    /// container or the runtime could not start it). A start failure maps
    /// through the agent's own table,
    /// [`ErrorKind::exit_status`](hypercontainer_protocol::ErrorKind::exit_status),
    /// so the status a front end exits with is the one the agent reported.
    ///
    /// ```
    /// use hypercontainer::sandbox::Error;
    /// assert_eq!(Error::NoImage.exit_status(), 125);
    /// ```
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::ProcessStart { kind, .. } => kind.exit_status(),
            _ => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercontainer_protocol::ErrorKind;

    fn start_error(kind: ErrorKind) -> Error {
        Error::ProcessStart {
            kind,
            message: String::new(),
            status: kind.exit_status(),
        }
    }

    #[test]
    fn start_errors_map_as_dockers_cli() {
        assert_eq!(start_error(ErrorKind::NotFound).exit_status(), 127);
        assert_eq!(start_error(ErrorKind::PermissionDenied).exit_status(), 126);
        for k in [
            ErrorKind::BadUser,
            ErrorKind::BadCwd,
            ErrorKind::Rootfs,
            ErrorKind::Spawn,
        ] {
            assert_eq!(start_error(k).exit_status(), 125);
        }
        assert_eq!(Error::Config("x".into()).exit_status(), 125);
    }
}
