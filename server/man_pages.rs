//! `rexecd --man-pages DIR` (hidden): rexecd.8 and rexecd-init.8 from the clap
//! definitions, so the manual pages say what `--help` says. Used by
//! scripts/build-deb; taken before the daemon's flags are parsed, so it is
//! not a config-file key.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

pub fn main(mut words: impl Iterator<Item = OsString>) -> ExitCode {
    let (Some(dir), None) = (words.next(), words.next()) else {
        eprintln!("rexecd: usage: rexecd --man-pages DIR");
        return ExitCode::from(2);
    };
    let pages = [
        ("rexecd.8", crate::Args::command()),
        (
            "rexecd-init.8",
            crate::init::InitArgs::command().name("rexecd-init"),
        ),
    ];
    for (file, command) in pages {
        if let Err(e) = write_page(Path::new(&dir), file, command) {
            eprintln!("rexecd: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn write_page(dir: &Path, file: &str, command: clap::Command) -> Result<(), String> {
    let path = dir.join(file);
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .render(&mut page)
        .and_then(|()| std::fs::write(&path, page))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
