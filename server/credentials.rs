//! `%d/NAME` in a path flag: the file systemd's `LoadCredential=NAME:...`
//! put in `$CREDENTIALS_DIRECTORY`, as `%d` means in the unit itself. The
//! config file can then name credentials, which systemd only expands in
//! `ExecStart=`, and a dynamic user reads secrets that root owns.

use std::path::PathBuf;

/// The prefix that stands for the credentials directory.
const PREFIX: &str = "%d/";

/// clap's value parser for `--tokens-file`, `--tls-cert`, `--tls-key` and
/// `--tls-client-ca`: `%d/NAME` under `$CREDENTIALS_DIRECTORY`, any other
/// value a path as given.
pub fn path(value: &str) -> Result<PathBuf, String> {
    resolve(
        value,
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    )
}

fn resolve(value: &str, directory: Option<PathBuf>) -> Result<PathBuf, String> {
    let Some(name) = value.strip_prefix(PREFIX) else {
        return Ok(PathBuf::from(value));
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!(
            "{PREFIX}NAME names one credential (LoadCredential=NAME:...), not a path"
        ));
    }
    match directory {
        Some(directory) if !directory.as_os_str().is_empty() => Ok(directory.join(name)),
        _ => Err(format!(
            "{PREFIX} is the credentials directory, but $CREDENTIALS_DIRECTORY is not set \
             (systemd sets it for LoadCredential=; elsewhere give the file's path)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_d_names_a_file_in_the_credentials_directory() {
        let dir = Some(PathBuf::from("/run/credentials/rexecd.service"));
        assert_eq!(
            resolve("%d/tokens", dir.clone()).unwrap(),
            PathBuf::from("/run/credentials/rexecd.service/tokens")
        );
        assert_eq!(
            resolve("/etc/rexecd/tokens", None).unwrap(),
            PathBuf::from("/etc/rexecd/tokens")
        );
        assert!(
            resolve("%d/tokens", None)
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY")
        );
        assert!(resolve("%d/../etc/shadow", dir.clone()).is_err());
        assert!(resolve("%d/", dir).is_err());
    }
}
