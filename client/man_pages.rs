//! `rexec --man-pages DIR` (hidden): rexec.1 and one page per tool
//! (rexec-bench.1, ...) from the clap definitions, for scripts/build-deb.
//! Taken before the flags are parsed, so no remote word is given up for it.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

pub fn main(command: clap::Command, mut words: impl Iterator<Item = OsString>) -> ExitCode {
    let (Some(dir), None) = (words.next(), words.next()) else {
        eprintln!("rexec: usage: rexec --man-pages DIR");
        return ExitCode::from(2);
    };
    let dir = Path::new(&dir);
    let mut pages = vec![("rexec.1".to_string(), command.clone())];
    for tool in command.get_subcommands().filter(|tool| !tool.is_hide_set()) {
        // clap names are &'static str here; this process writes pages and exits.
        let name: &'static str = format!("rexec-{}", tool.get_name()).leak();
        pages.push((format!("{name}.1"), tool.clone().name(name)));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        let mut text = Vec::new();
        let written = clap_mangen::Man::new(page)
            .render(&mut text)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            eprintln!("rexec: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
