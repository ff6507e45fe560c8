//! What /proc says about a process (memory, CPU time) and about the machine.

use serde::Serialize;

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM, ...), in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory now, KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident memory, KiB.
pub(crate) fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// User + system CPU seconds a process has used (`/proc/<pid>/stat`).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// User and system CPU seconds a process has used.
pub(crate) fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: the fields start after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / clock_ticks(), stime / clock_ticks()))
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
fn clock_ticks() -> f64 {
    100.0
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) mem_total_mib: u64,
}

impl Machine {
    pub(crate) fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let mem_total_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            mem_total_mib,
        }
    }
}

/// The open-file limit the bench asks for: `abuse` holds tens of thousands
/// of sockets, and so does its server.
const WANT_NOFILE: u64 = 1 << 16;

/// Raises this process's soft limit on open files to the hard limit (and,
/// where it is allowed to — as root — the hard limit to 65,536 first);
/// returns the new soft limit. Child processes inherit it.
pub(crate) fn raise_nofile() -> u64 {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get()
        && hard < WANT_NOFILE
    {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, WANT_NOFILE, WANT_NOFILE);
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
