//! rexec.exe under wine: the cross-built Windows client (scripts/test-all
//! builds it for x86_64-pc-windows-gnu) in a wine prefix of the test run's
//! own, with a helper to run it and collect what it printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{local_token, output_within, scratch_dir};

pub const LIMIT: Duration = Duration::from_secs(60);

/// Where scripts/test-all puts the cross-built client.
pub fn rexec_exe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-pc-windows-gnu/release/rexec.exe")
}

/// One wine prefix for every test in a test binary (making one takes seconds).
pub struct Wine {
    pub program: PathBuf,
    pub prefix: PathBuf,
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

pub fn wine() -> &'static Wine {
    static WINE: OnceLock<Wine> = OnceLock::new();
    WINE.get_or_init(|| {
        let exe = rexec_exe();
        assert!(
            exe.is_file(),
            "{} is missing: scripts/test-all cross-builds it \
             (cargo build --release --target x86_64-pc-windows-gnu --bin rexec)",
            exe.display()
        );
        // Debian's wine64 package: `wine64` on PATH in some versions, only
        // /usr/lib/wine/wine64 (behind the `wine` script) in others.
        let program = on_path("wine64")
            .or_else(|| Some(PathBuf::from("/usr/lib/wine/wine64")).filter(|p| p.is_file()))
            .or_else(|| on_path("wine"))
            .expect("wine is missing: scripts/test-all installs it (Debian's wine64)");
        let prefix = scratch_dir("wine").join("prefix");
        let boot = Command::new(&program)
            .args(["wineboot.exe", "--init"])
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            .stdin(Stdio::null())
            .output()
            .expect("run wineboot");
        assert!(boot.status.success(), "wineboot failed: {boot:?}");
        // Wine 8 has no bcryptprimitives.dll, and Rust's std (1.78 on) gets its
        // random bytes from its ProcessPrng: without this stand-in (forwarding
        // to RtlGenRandom, tests/windows/processprng.c) rexec.exe cannot start.
        let system32 = prefix.join("drive_c/windows/system32");
        assert!(system32.is_dir(), "wineboot made no {}", system32.display());
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/windows/processprng.c");
        let built = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-s", "-o"])
            .arg(system32.join("bcryptprimitives.dll"))
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .expect("x86_64-w64-mingw32-gcc is missing: scripts/test-all installs it");
        assert!(
            built.status.success(),
            "building the ProcessPrng shim: {built:?}"
        );
        Wine { program, prefix }
    })
}

/// `wine rexec.exe` with the local token handed over (a Windows client never
/// sends it by itself) and stdin closed unless the test sets it.
pub fn rexec_exe_command() -> Command {
    let wine = wine();
    let mut command = Command::new(&wine.program);
    command
        .arg(rexec_exe())
        .env("WINEPREFIX", &wine.prefix)
        .env("WINEDEBUG", "-all")
        .env("REXEC_TOKEN", local_token())
        .env("REXEC_HISTORY", scratch_dir("history").join("history"))
        .stdin(Stdio::null());
    command
}

pub fn rexec_at(addr: &str) -> Command {
    let mut command = rexec_exe_command();
    command.args(["--addr", addr]);
    command
}

pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

pub fn run(command: &mut Command, stdin: &[u8]) -> Run {
    let out = output_within(command, stdin, LIMIT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
