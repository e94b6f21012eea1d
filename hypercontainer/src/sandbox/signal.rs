//! Signal names as images and Docker's CLI give them.

use std::collections::HashMap;

/// Parses a signal as an image's StopSignal gives it: `SIGTERM`, `TERM`
/// or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s).to_ascii_uppercase();
    let table: HashMap<&str, i32> = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ]
    .into_iter()
    .collect();
    if let Some(n) = table.get(name.as_str()) {
        return Some(*n);
    }
    let rt = name.strip_prefix("RTMIN")?;
    let base = libc::SIGRTMIN();
    if rt.is_empty() {
        return Some(base);
    }
    let off: i32 = rt.strip_prefix('+')?.parse().ok()?;
    (base + off <= libc::SIGRTMAX()).then_some(base + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_stop_signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }
}
