//! The standard `process_*` metrics every Prometheus client exports (RSS,
//! fds, CPU, start time), read from /proc at each scrape. The prometheus
//! crate's own collector needs `procfs` and its tree; these five numbers
//! are three small files.

use prometheus::core::{Collector as PromCollector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

pub struct Collector {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl Collector {
    pub fn new() -> Collector {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        let mut descs = Vec::new();
        descs.extend(cpu.desc().into_iter().cloned());
        for metric in [&resident, &virtual_memory, &open_fds, &max_fds] {
            descs.extend(metric.desc().into_iter().cloned());
        }
        descs.extend(start_time.desc().into_iter().cloned());
        Collector {
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            descs,
        }
    }

    /// Reads /proc now; a file that cannot be read leaves its metrics as they were.
    fn refresh(&self) {
        if let Some(stat) = Stat::read() {
            // Counters only go up: add what was spent since the last scrape.
            let spent = stat.cpu_seconds - self.cpu.get();
            if spent > 0.0 {
                self.cpu.inc_by(spent);
            }
            self.resident.set(stat.resident_bytes);
            self.virtual_memory.set(stat.virtual_bytes);
            if let Some(start) = stat.start_time_seconds {
                self.start_time.set(start);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
    }
}

impl PromCollector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut families = self.cpu.collect();
        for metric in [
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
        ] {
            families.extend(metric.collect());
        }
        families.extend(self.start_time.collect());
        families
    }
}

/// What /proc/self/stat says, in units.
struct Stat {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: Option<f64>,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: fields
        // are counted after its closing one, from field 3 (state).
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        // SAFETY: sysconf reads a configuration value; no memory is involved.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let cpu_seconds = (field(14)? + field(15)?) as f64 / ticks;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|secs| secs.trim().parse::<u64>().ok())
        });
        Some(Stat {
            cpu_seconds,
            resident_bytes: i64::try_from(field(24)?.saturating_mul(page.max(1) as u64)).ok()?,
            virtual_bytes: i64::try_from(field(23)?).ok()?,
            start_time_seconds: boot_time
                .map(|boot| boot as f64 + field(22).unwrap_or(0) as f64 / ticks),
        })
    }
}
