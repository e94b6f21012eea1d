//! Benchmarks live beside this crate as `[[bench]]` targets; this library
//! holds what they share.
//!
//! # Groups
//!
//! A benchmark made of several independent groups (each a comparison
//! with its own summary line) declares them with [`Groups`]. Asked with
//! `--groups`, the binary prints `groups: NAME...` and exits, so that
//! `cargo xtask bench` can run each group as a job of its own: a group that
//! locks up the emulated host runs again in a fresh one while the groups
//! already finished, and their samples, are kept.
//! `HYPERCONTAINER_BENCH_ONLY=NAME` runs one group; unset, all of them run.

/// The environment variable naming the one group to run.
pub const ONLY_ENV: &str = "HYPERCONTAINER_BENCH_ONLY";

/// The groups of a benchmark binary; see the [crate docs](self).
#[derive(Debug, Clone)]
pub struct Groups {
    names: &'static [&'static str],
    only: Option<String>,
}

impl Groups {
    /// Declares `names`; answers `--groups` (and exits) when asked.
    pub fn declare(names: &'static [&'static str]) -> Groups {
        if std::env::args().any(|a| a == "--groups") {
            println!("groups: {}", names.join(" "));
            std::process::exit(0);
        }
        Groups::with_only(
            names,
            std::env::var(ONLY_ENV).ok().filter(|v| !v.is_empty()),
        )
    }

    fn with_only(names: &'static [&'static str], only: Option<String>) -> Groups {
        if let Some(o) = &only {
            if !names.contains(&o.as_str()) {
                eprintln!("{ONLY_ENV}={o} names no group of this benchmark ({names:?})");
            }
        }
        Groups { names, only }
    }

    /// Whether group `name` runs.
    pub fn enabled(&self, name: &str) -> bool {
        debug_assert!(self.names.contains(&name), "undeclared group {name}");
        self.only.as_deref().is_none_or(|o| o == name)
    }
}

/// Prints a comparison's summary line: ours, the peer, the ratio (ours
/// over the peer) and the sample counts, prefixed `summary:` so that
/// `cargo xtask bench` can repeat it at the end of a long run.
pub fn summary(what: &str, ours: (f64, usize), peer: (&str, f64, usize), unit: &str) {
    let (ours, n_ours) = ours;
    let (peer_name, peer, n_peer) = peer;
    println!(
        "summary: {what}: ours {ours:.1} {unit} ({n_ours} samples), {peer_name} {peer:.1} {unit} \
         ({n_peer} samples), ratio {:.3}",
        ours / peer
    );
}

/// The median of `v` (the upper one of an even count); zero when empty.
pub fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_or_all_run() {
        const NAMES: &[&str] = &["a", "b"];
        let all = Groups::with_only(NAMES, None);
        assert!(all.enabled("a") && all.enabled("b"));
        let one = Groups::with_only(NAMES, Some("b".into()));
        assert!(!one.enabled("a") && one.enabled("b"));
    }
}
