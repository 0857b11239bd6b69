//! `rexecd --config FILE`: a TOML file whose keys are rexecd's long flag names
//! (`kill-grace = "5s"`). It is turned into flags and parsed by clap with the
//! command line, so every flag is configurable and validated in one place;
//! a flag given on the command line (or by its environment variable) wins.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

/// The flag that names the config file; it cannot appear inside one.
const CONFIG_FLAG: &str = "config";

/// One key of the file, as the argument id it sets and the words it stands for.
struct FileFlag {
    id: String,
    words: Vec<OsString>,
}

/// Parses the process's arguments into `T`, merged with the config file when
/// `--config` is given. Bad flags, a bad file or a bad value in it exit 2.
pub fn parse<T: CommandFactory + FromArgMatches>() -> Result<T, ExitCode> {
    let command_line: Vec<OsString> = std::env::args_os().collect();
    let matches = T::command().get_matches_from(&command_line);
    let Some(path) = matches.get_one::<std::path::PathBuf>(CONFIG_FLAG).cloned() else {
        return T::from_arg_matches(&matches).map_err(|e| e.exit());
    };
    let usage_error = |message: String| {
        eprintln!("rexecd: {}: {message}", path.display());
        ExitCode::from(2)
    };
    let flags = read_flags(&path, &T::command()).map_err(usage_error)?;
    let program = command_line
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from("rexecd"));

    // The file's values alone first, so an error names the file, not a flag.
    let file_only =
        std::iter::once(program.clone()).chain(flags.iter().flat_map(|f| f.words.clone()));
    if let Err(e) = T::command().try_get_matches_from(file_only) {
        return Err(usage_error(first_line(&e)));
    }

    let from_file = flags
        .into_iter()
        .filter(|flag| !given_outside_file(&matches, &flag.id))
        .flat_map(|flag| flag.words);
    let merged = std::iter::once(program)
        .chain(from_file)
        .chain(command_line.into_iter().skip(1));
    let matches = T::command().get_matches_from(merged);
    T::from_arg_matches(&matches).map_err(|e| e.exit())
}

fn given_outside_file(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// clap's message without its "error: " prefix and usage hints.
fn first_line(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn read_flags(path: &Path, command: &clap::Command) -> Result<Vec<FileFlag>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let known: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != CONFIG_FLAG))
        .filter(|arg| !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version))
        .collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = known
            .iter()
            .find(|arg| arg.get_long() == Some(long.as_str()))
        else {
            let names: Vec<&str> = known.iter().filter_map(|arg| arg.get_long()).collect();
            return Err(format!(
                "unknown key '{key}'; known keys: {}",
                names.join(", ")
            ));
        };
        let words = flag_words(&long, arg, value).map_err(|m| format!("key '{key}': {m}"))?;
        flags.push(FileFlag {
            id: arg.get_id().to_string(),
            words,
        });
    }
    Ok(flags)
}

/// `--long=value` words for one key; a switch is `true` or `false`, a list repeats the flag.
fn flag_words(long: &str, arg: &clap::Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("expected true or false".to_string()),
        };
    }
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        _ => Err("expected a string or a number".to_string()),
    };
    let values = match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        }
        other => vec![scalar(other)?],
    };
    Ok(values
        .into_iter()
        .map(|value| format!("--{long}={value}").into())
        .collect())
}
