//! The Debian package (`scripts/build-deb`, run by scripts/test-all before
//! the tests): unpacked into a scratch root with `dpkg-deb -x`, it holds
//! working binaries, the unit, the config, man pages and completions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{output_within, scratch_dir};

const LIMIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// This version's .deb; `None` outside CI when it was not built (the run
/// says so), a failure in CI.
fn package() -> Option<PathBuf> {
    let dir = repo_file("target/debian");
    let prefix = format!("rexec_{}-", env!("CARGO_PKG_VERSION"));
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
    });
    if found.is_none() {
        let message = format!(
            "no {prefix}*.deb in {}: run scripts/build-deb (scripts/test-all does)",
            dir.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED (not in CI): {message}");
    }
    found
}

fn unpacked(deb: &Path) -> PathBuf {
    let root = scratch_dir("package");
    let out = output_within(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
        b"",
        LIMIT,
    );
    assert!(out.status.success(), "dpkg-deb -x: {}", text(&out.stderr));
    root
}

fn deb_field(deb: &Path, field: &str) -> String {
    let out = output_within(
        Command::new("dpkg-deb").arg("-f").arg(deb).arg(field),
        b"",
        LIMIT,
    );
    assert!(out.status.success(), "dpkg-deb -f: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn package_holds_binaries_unit_config_man_pages_and_completions() {
    let Some(deb) = package() else { return };
    assert_eq!(deb_field(&deb, "Package"), "rexec");
    assert_eq!(
        deb_field(&deb, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    assert!(deb_field(&deb, "Depends").contains("libc6"));
    let root = unpacked(&deb);
    for file in [
        "usr/bin/rexecd",
        "usr/bin/rexec",
        "lib/systemd/system/rexecd.service",
        "etc/rexecd/rexecd.toml",
        "etc/logrotate.d/rexecd",
        "usr/share/doc/rexec/examples/run-as.conf",
        "usr/share/man/man1/rexec.1.gz",
        "usr/share/man/man1/rexec-bench.1.gz",
        "usr/share/man/man8/rexecd.8.gz",
        "usr/share/man/man8/rexecd-init.8.gz",
        "usr/share/bash-completion/completions/rexec",
        "usr/share/zsh/vendor-completions/_rexec",
        "usr/share/fish/vendor_completions.d/rexec.fish",
    ] {
        assert!(
            root.join(file).is_file(),
            "{file} missing from {}",
            deb.display()
        );
    }
    for binary in ["usr/bin/rexecd", "usr/bin/rexec"] {
        let mode = std::fs::metadata(root.join(binary))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{binary}");
    }
    assert_eq!(
        std::fs::read(root.join("etc/rexecd/rexecd.toml")).expect("config"),
        std::fs::read(repo_file("deploy/rexecd.toml")).expect("deploy config"),
        "the packaged config is not deploy/rexecd.toml: rebuild the package"
    );
}

#[test]
fn packaged_binaries_run_and_man_pages_name_their_flags() {
    let Some(deb) = package() else { return };
    let root = unpacked(&deb);
    for (binary, name) in [("usr/bin/rexecd", "rexecd"), ("usr/bin/rexec", "rexec")] {
        let out = output_within(Command::new(root.join(binary)).arg("--version"), b"", LIMIT);
        assert_eq!(
            text(&out.stdout),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    let page = |path: &str| {
        let out = output_within(
            Command::new("gzip").arg("-dc").arg(root.join(path)),
            b"",
            LIMIT,
        );
        assert!(out.status.success(), "gzip -dc {path}");
        text(&out.stdout)
    };
    let rexecd = page("usr/share/man/man8/rexecd.8.gz");
    assert!(
        rexecd.contains(".TH rexecd 8") && rexecd.contains("tokens\\-file"),
        "{rexecd}"
    );
    let init = page("usr/share/man/man8/rexecd-init.8.gz");
    assert!(init.contains("\\-\\-name"), "{init}");
    let rexec = page("usr/share/man/man1/rexec.1.gz");
    assert!(
        rexec.contains(".TH rexec 1") && rexec.contains("connect\\-timeout"),
        "{rexec}"
    );

    let completion = root.join("usr/share/bash-completion/completions/rexec");
    let out = output_within(
        Command::new("bash").args([
            "-c",
            &format!("source '{}' && complete -p rexec", completion.display()),
        ]),
        b"",
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn packaged_unit_points_at_usr_bin_and_verifies() {
    let Some(deb) = package() else { return };
    let root = unpacked(&deb);
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/rexecd.service")).expect("read unit");
    assert!(
        unit.contains("\nExecStart=/usr/bin/rexecd --config /etc/rexecd/rexecd.toml\n"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    // Otherwise the unit is deploy/rexecd.service.
    let shipped = std::fs::read_to_string(repo_file("deploy/rexecd.service")).expect("unit");
    assert_eq!(
        unit,
        shipped.replace("/usr/local/bin/rexecd", "/usr/bin/rexecd")
    );
    let installed = unit
        .replace(
            "/usr/bin/rexecd",
            &root.join("usr/bin/rexecd").display().to_string(),
        )
        .replace(
            "/etc/rexecd/rexecd.toml",
            &root.join("etc/rexecd/rexecd.toml").display().to_string(),
        );
    let path = scratch_dir("package-unit").join("rexecd.service");
    std::fs::write(&path, installed).expect("write unit");
    let out = output_within(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        b"",
        LIMIT,
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out.stderr)
    );
}
