//! A real nats-server for the NATS tests, and rexecd agents on it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Daemon, eventually, scratch_dir};

/// A nats-server on 127.0.0.1:PORT; dropping it kills and reaps it.
pub struct Broker {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        Broker::start_with(port, &[])
    }

    /// With more nats-server flags (TLS, users).
    pub fn start_with(port: u16, extra: &[&str]) -> Broker {
        let log = scratch_dir("nats").join("nats-server.log");
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create broker log"))
            .spawn()
            .expect("spawn nats-server");
        let broker = Broker { child, port, log };
        assert!(
            eventually(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "nats-server did not listen on {port}; log:\n{}",
            std::fs::read_to_string(&broker.log).unwrap_or_default()
        );
        broker
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nats-server binary: $NATS_SERVER, then PATH, then Debian's /usr/sbin.
/// Missing, the test fails (scripts/test-all installs it); it never skips.
pub fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let in_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file());
    let path = in_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        path.is_file(),
        "nats-server not found (apt-get install nats-server, or set NATS_SERVER)"
    );
    path
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// rexecd with `--nats URL --nats-name NAME` and `extra` flags.
pub fn agent(broker_url: &str, name: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--nats", broker_url, "--nats-name", name];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_with(&args);
    assert_eq!(daemon.nats_name.as_deref(), Some(name), "readiness line");
    daemon
}

/// A runtime for a test's own NATS client (raw requests, a stand-in agent).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
