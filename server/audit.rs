//! One JSON line per finished exec: who ran what, and how it ended. Never
//! stdin, never credentials.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::runner::types::{Caller, ExecSpec, ExitReport, Program, Stop, Termination};

/// Where audit lines go; cloned into every exec.
#[derive(Clone)]
pub struct Audit {
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
    /// `--audit-log`'s path, reopened on SIGHUP; `None` for stderr.
    path: Option<Arc<Path>>,
}

/// What is known about an exec when it starts.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    exec_id: String,
    peer: String,
    principal: String,
    listener: &'static str,
    program: Program,
    cwd: Option<String>,
    pid: u32,
}

/// A finished file transfer, for its audit line.
pub struct Transfer<'a> {
    pub caller: &'a Caller,
    pub direction: &'static str,
    pub path: &'a str,
    pub entries: u64,
    pub bytes: u64,
    /// The digest files were checked with; `None` before one was agreed.
    pub digest: Option<rexec::files::Digest>,
    pub duration: std::time::Duration,
    /// The status it failed with; `None` when it succeeded.
    pub result: Option<&'a tonic::Status>,
}

impl AuditRecord {
    pub fn new(exec_id: &str, caller: &Caller, spec: &ExecSpec, pid: u32) -> Self {
        AuditRecord {
            exec_id: exec_id.to_string(),
            peer: caller.peer.clone(),
            principal: caller.principal.clone(),
            listener: caller.listener,
            program: spec.program.clone(),
            cwd: spec.cwd.as_ref().map(|p| p.display().to_string()),
            pid,
        }
    }

    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }
}

impl Audit {
    pub fn stderr() -> Self {
        Audit {
            sink: Arc::new(Mutex::new(Box::new(std::io::stderr()))),
            path: None,
        }
    }

    /// `--audit-log FILE`: appended to (log rotation by copytruncate keeps
    /// working, and so does a move plus SIGHUP), created readable by its
    /// owner only.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        Ok(Audit {
            sink: Arc::new(Mutex::new(Box::new(open_log(path)?))),
            path: Some(Arc::from(path)),
        })
    }

    /// SIGHUP: opens the audit log at its path again, so lines go to the file
    /// logrotate just created instead of the one it moved away. On failure
    /// the old file keeps the lines. `Ok(None)` when the sink is stderr.
    pub fn reopen(&self) -> std::io::Result<Option<PathBuf>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let file = open_log(path)?;
        let mut sink = match self.sink.lock() {
            Ok(sink) => sink,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Lines already written went out whole (one write each, flushed).
        *sink = Box::new(file);
        Ok(Some(path.to_path_buf()))
    }

    /// A call refused before anything ran (credentials, limits, a bad
    /// request): who asked, and why, in the status the client got.
    pub fn refused(&self, peer: &str, principal: &str, listener: &str, status: &tonic::Status) {
        // Every refusal is audited here, so it is counted here too.
        crate::metrics::get().rejected(crate::metrics::Rejection::of(status.code()));
        self.write(json!({
            "audit": "refused",
            "time": now(),
            "peer": peer,
            "principal": principal,
            "listener": listener,
            "status": status_name(status.code()),
            "reason": status.message(),
        }));
    }

    /// An insecure choice made at start, recorded where the commands are.
    pub fn warning(&self, message: &str) {
        self.write(json!({"audit": "warning", "time": now(), "message": message}));
    }

    pub fn exec_finished(&self, record: &AuditRecord, report: &ExitReport) {
        crate::metrics::get().exec_finished(record.listener, report);
        let mut line = json!({
            "audit": "exec",
            "time": now(),
            "exec_id": record.exec_id,
            "peer": record.peer,
            "principal": record.principal,
            "listener": record.listener,
            "cwd": record.cwd,
            "pid": record.pid,
            "timed_out": report.timed_out(),
            "client_gone": report.stopped_by == Some(Stop::ClientGone),
            // Why rexecd ended it: timeout_ms, deadline, client_gone,
            // shutdown or output_limit; null when it ended by itself.
            "stopped_by": report.stopped_by.map(Stop::as_str),
            "cpu_user_us": report.cpu.user.as_micros() as u64,
            "cpu_system_us": report.cpu.system.as_micros() as u64,
            "stdout_bytes": report.stdout_bytes,
            "stderr_bytes": report.stderr_bytes,
            "truncated": report.truncated,
            "duration_ms": report.duration.as_millis() as u64,
        });
        match &record.program {
            Program::Shell(command) => line["command"] = json!(command),
            Program::Argv(argv) => line["argv"] = json!(argv),
            Program::LoginShell => line["login_shell"] = json!(true),
        }
        match report.termination {
            Termination::Code(code) => line["exit_code"] = json!(code),
            Termination::Signal(signal) => line["signal"] = json!(rexec::signals::name(signal)),
        }
        self.write(line);
    }

    /// One line per upload or download, when it ends: who, which way,
    /// where, how much, and how it ended (`ok` or the status).
    pub fn transfer(&self, transfer: &Transfer) {
        let caller = transfer.caller;
        self.write(json!({
            "audit": "transfer",
            "time": now(),
            "peer": caller.peer,
            "principal": caller.principal,
            "listener": caller.listener,
            "direction": transfer.direction,
            "path": transfer.path,
            "entries": transfer.entries,
            "bytes": transfer.bytes,
            "digest": transfer.digest.map(rexec::files::digest_name),
            "duration_ms": transfer.duration.as_millis() as u64,
            "result": transfer.result.map_or_else(|| "OK".to_string(), |s| status_name(s.code())),
            "error": transfer.result.map(|s| s.message()),
        }));
    }

    fn write(&self, line: serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        if let Ok(mut sink) = self.sink.lock() {
            // One write per line so concurrent execs never interleave inside a line.
            if let Err(e) = sink.write_all(text.as_bytes()).and_then(|()| sink.flush()) {
                tracing::error!("cannot write the audit line: {e}");
            }
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `UNAUTHENTICATED`, `RESOURCE_EXHAUSTED`: the names gRPC documents.
pub fn status_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
