//! The process's CPU time, memory, threads and open files, read from
//! `/proc/self` at each scrape (Linux; elsewhere nothing is reported).

/// What `/proc/self` says about this process.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Process {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

impl Process {
    /// Reads `/proc/self`; `None` where it cannot be read.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut p = parse_stat(&stat, ticks.max(1) as u64, page.max(1) as u64)?;
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(p)
    }
}

/// Parses `/proc/self/stat` (proc(5)): the fields after the command name,
/// which is in parentheses and may hold spaces and parentheses itself.
pub fn parse_stat(stat: &str, ticks_per_second: u64, page_bytes: u64) -> Option<Process> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let cpu_ticks = field(14)?.saturating_add(field(15)?);
    Some(Process {
        cpu_seconds: cpu_ticks as f64 / ticks_per_second as f64,
        threads: field(20)?,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_bytes),
        open_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let line = "4242 (wo of) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let p = parse_stat(line, 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert!(parse_stat("garbage", 100, 4096).is_none());
        assert!(parse_stat("1 (x) S 1", 100, 4096).is_none());
    }

    #[test]
    fn reads_this_process() {
        let p = Process::read().expect("/proc/self on Linux");
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 1);
    }
}
