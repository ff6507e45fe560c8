//! The kernel's per-thread I/O accounting (Linux only), for the tests that
//! count what one of the store's threads writes.

use std::path::Path;

/// The id of the one thread named `name` (the kernel keeps the first 15
/// bytes of a thread's name).
pub(crate) fn thread_named(name: &str) -> u32 {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let entry = entry.unwrap();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            found.push(entry.file_name().to_string_lossy().parse::<u32>().unwrap());
        }
    }
    assert_eq!(found.len(), 1, "one thread named {name}: {found:?}");
    found[0]
}

/// The bytes the thread has passed to write(2) and its kin (`wchar`).
pub(crate) fn written_by(tid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/self/task/{tid}/io")).expect("task io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .expect("wchar")
        .trim()
        .parse()
        .unwrap()
}

pub(crate) fn wal_len(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}
