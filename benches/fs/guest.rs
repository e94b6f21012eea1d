//! The guest side: the init script that runs the workloads, and the
//! console clock that times them.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypercontainer::vmm::ConsoleSink;

use crate::{Setup, CMDLINE, DIRS, FILES_PER_DIR, READ_ONLY_WORKLOADS, WORKLOADS};

pub const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mkdir -p /mnt
case "$hcfs" in
virtiofs) mount -t virtiofs TAG /mnt ;;
9p) mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072 TAG /mnt ;;
erofs) mount -t erofs -o ro /dev/vda /mnt ;;
esac || { echo "HCFAIL mount"; reboot -f; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
w=/mnt/out-$hcrun
t=/mnt/tree
if [ "$hcfs" != erofs ]; then
  mkdir $w || { echo "HCFAIL mkdir"; reboot -f; }
  t=$w/tree
  drop
  echo "HCSTART seq_write_256MiB"
  dd if=/dev/zero of=$w/big bs=1M count=FILE_MIB conv=fsync 2>/dev/null
  echo "HCEND seq_write_256MiB $?"
  rm $w/big
fi
drop
echo "HCSTART seq_read_256MiB"
dd if=/mnt/read.bin of=/dev/null bs=1M 2>/dev/null
echo "HCEND seq_read_256MiB $?"
if [ "$hcfs" != erofs ]; then
  drop
  echo "HCSTART untar_3000"
  tar -xf /mnt/files.tar -C $w && sync
  echo "HCEND untar_3000 $?"
fi
drop
echo "HCSTART find_3000"
find $t > /tmp/paths
echo "HCEND find_3000 $?"
echo "HCCOUNT $(wc -l < /tmp/paths)"
drop
echo "HCSTART stat_3000"
cat /tmp/paths | xargs stat -c '%s %Y' > /dev/null
echo "HCEND stat_3000 $?"
echo HCBENCH-DONE
reboot -f
"#;

/// Console lines with the host time each arrived at.
pub type Lines = Vec<(String, Instant)>;

/// Splits console output into timestamped lines.
#[derive(Default)]
pub struct LineClock {
    partial: Vec<u8>,
    pub lines: Lines,
}

impl LineClock {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.feed_at(bytes, Instant::now());
    }

    /// [`Self::feed`] of bytes that arrived at `now`.
    pub fn feed_at(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                self.lines.push((line, now));
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
    }
}

/// Feeds a [`LineClock`] and hands it over when the VM is dropped.
pub struct ClockSink {
    pub clock: LineClock,
    pub done: mpsc::Sender<Lines>,
}

impl ConsoleSink for ClockSink {
    fn write(&mut self, bytes: &[u8]) {
        self.clock.feed(bytes);
    }
}

impl Drop for ClockSink {
    fn drop(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.clock.lines));
    }
}

pub fn text(lines: &Lines) -> String {
    lines
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The workloads' times (host clock between `HCSTART` and `HCEND`);
/// panics when the guest did not finish or a workload failed.
pub fn workload_times(setup: Setup, lines: &Lines) -> Vec<(String, Duration)> {
    let console = text(lines);
    assert!(
        console.contains("HCBENCH-DONE") && !console.contains("HCFAIL"),
        "{}: the guest did not finish; console:\n{console}",
        setup.name()
    );
    let entries = DIRS * FILES_PER_DIR + DIRS + 1;
    assert!(
        console.contains(&format!("HCCOUNT {entries}")),
        "{}: find did not list {entries} paths; console:\n{console}",
        setup.name()
    );
    let mut out = Vec::new();
    let mut start: Option<(&str, Instant)> = None;
    for (line, at) in lines {
        if let Some(name) = line.strip_prefix("HCSTART ") {
            start = Some((name, *at));
        } else if let Some(rest) = line.strip_prefix("HCEND ") {
            let (name, rc) = rest.split_once(' ').unwrap_or((rest, "?"));
            assert_eq!(
                rc,
                "0",
                "{}: {name} failed; console:\n{console}",
                setup.name()
            );
            if let Some((s, began)) = start.take() {
                assert_eq!(s, name, "console:\n{console}");
                out.push((name.to_string(), *at - began));
            }
        }
    }
    let want = if setup == Setup::Erofs {
        READ_ONLY_WORKLOADS
    } else {
        WORKLOADS
    };
    let got: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, want, "console:\n{console}");
    out
}

pub fn cmdline(setup: Setup, run: u32) -> String {
    format!("{CMDLINE} hcfs={} hcrun={run}", setup.mount())
}
